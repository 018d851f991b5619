"""Settings on pydantic: each step's settings class (``GPTConfig``, ``TrainConfig``, ...) is a
strict pydantic dataclass (``settings``) whose fields are declared once with ``pydantic.Field``
(default, description, bounds; ``Literal`` for choices; ``RESULT``: the field changes what a
training produces) and validated on construction; cross-field rules are in ``__post_init__``. A
bad value is a one-line ``ValueError``. Dagster's config, the CLI and the sweeps derive from them.

    >>> @settings
    ... class Demo:
    ...     rate: float = pydantic.Field(0.1, description="a rate", gt=0)
    ...     mode: typing.Literal["a", "b"] = pydantic.Field("a", description="a mode")
    >>> Demo(rate=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: Demo.rate must be a finite number > 0, got -1.0
    >>> describe(fields_of(Demo)["mode"])
    'a mode (one of: a, b)'
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import pydantic
import pydantic.dataclasses
from pydantic.fields import FieldInfo

RESULT = {"affects_result": True}  # json_schema_extra of a field that keys checkpoints and resumes
_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_CONFIG = pydantic.ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


def settings(cls: type | None = None, *, frozen: bool = False) -> Any:
    """``cls`` as a strict pydantic dataclass whose ``ValidationError`` is one line (``ValueError``)."""
    if cls is None:
        return functools.partial(settings, frozen=frozen)
    cls = pydantic.dataclasses.dataclass(cls, frozen=frozen, config=_CONFIG)
    if not cls.__pydantic_complete__:  # a rebuild would replace the __init__ below
        raise TypeError(f"{cls.__name__}: every annotation must resolve where the class is defined")
    validate = cls.__init__

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except pydantic.ValidationError as error:
            raise ValueError(one_line(cls, error)) from None

    cls.__init__ = __init__
    return cls


def fields_of(cls: Any) -> dict[str, FieldInfo]:
    """The fields of a settings class (or instance) by name, in declaration order."""
    return dict(cls.__pydantic_fields__)


def field_type(info: FieldInfo) -> type:
    """The field's type: ``int | None`` gives ``int``, ``tuple[str, ...]`` gives ``tuple``, a
    ``Literal`` the type of its choices."""
    if choices(info):
        return type(choices(info)[0])
    hint = info.annotation
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def choices(info: FieldInfo) -> tuple:
    """The values a ``Literal`` field allows (``()`` for any other)."""
    hint = info.annotation
    return next((typing.get_args(a) for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is typing.Literal), ())


def bounds(info: FieldInfo) -> dict[str, Any]:
    """The field's ``gt``/``ge``/``lt``/``le`` bounds."""
    return {name: getattr(m, name) for m in info.metadata for name in _SYMBOLS if hasattr(m, name)}


def describe(info: FieldInfo) -> str:
    """The description with the choices or bounds, for help texts and the Launchpad."""
    extra = ["one of: " + ", ".join(map(str, choices(info)))] if choices(info) else []
    extra += [f"{_SYMBOLS[name]} {value}" for name, value in bounds(info).items()]
    text = info.description or ""
    return f"{text} ({'; '.join(extra)})" if extra else text


def result_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields declared with ``json_schema_extra=RESULT``."""
    return tuple(name for name, info in fields_of(cls).items() if info.json_schema_extra == RESULT)


def requirement(info: FieldInfo) -> str:
    """What a value must be, in words: ``a positive integer``, ``in [0, 1)``, ``one of ('a', 'b')``."""
    if choices(info):
        return f"one of {choices(info)!r}"
    base, limits = field_type(info), bounds(info)
    if base is int and limits == {"ge": 1}:
        return "a positive integer"
    if base is float and len(limits) == 2 and ("ge" in limits or "gt" in limits):
        low = f"[{limits['ge']}" if "ge" in limits else f"({limits['gt']}"
        return f"in {low}, {limits['lt']})" if "lt" in limits else f"in {low}, {limits['le']}]"
    kind = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string",
            tuple: "a list of strings"}.get(base, getattr(base, "__name__", str(base)))
    return " ".join([kind] + [f"{_SYMBOLS[name]} {value}" for name, value in limits.items()])


def one_line(cls: type, error: pydantic.ValidationError, sources: tuple[type, ...] = ()) -> str:
    """The first problem of ``error`` in one line: ``GPTConfig.head_count must be a positive
    integer, got 0`` (in the words of the one of ``sources`` that declares the field, else of
    ``cls``); a ``__post_init__`` rule's own message; an unknown or missing field."""
    first = error.errors()[0]
    if first["type"] == "value_error":
        return str(first["ctx"]["error"])
    field = first["loc"][0] if first["loc"] else "?"
    field = list(fields_of(cls))[field] if isinstance(field, int) else str(field)  # a positional argument
    cls = next((source for source in sources if field in fields_of(source)), cls)
    if field not in fields_of(cls):  # unexpected_keyword_argument, extra_forbidden
        return f"{cls.__name__} has no field {field!r}"
    if first["type"] == "missing_argument":
        return f"{cls.__name__}.{field} is required"
    info, where = fields_of(cls)[field], ".".join(map(str, first["loc"]))
    if len(first["loc"]) > 1 and field_type(info) is not tuple:  # inside a nested model
        return f"{cls.__name__}.{where}: {first['msg'].lower()}, got {first['input']!r}"
    return f"{cls.__name__}.{field} must be {requirement(info)}, got {first['input']!r}"
