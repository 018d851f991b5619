"""Config fields declared once: default, description, bounds and choices in one ``param(...)``.

Every step's settings are a plain dataclass in the core (``GPTConfig``, ``TrainConfig``,
``StoriesConfig``, ``TokenizerConfig``, ``DatasetConfig``, ``GenerationConfig``). Each field is
written once, with ``param``; the Dagster config classes (``gpt_pipeline.defs.configs``), the CLI's
options and help, the schedules and the sweeps are all derived from these declarations, and
``check`` validates an instance against them.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     rate: float = param(0.1, "a rate", gt=0)
    ...     mode: str = param("a", "a mode", choices=("a", "b"))
    >>> check(Demo(rate=0.5)).rate
    0.5
    >>> check(Demo(rate=-1.0))
    Traceback (most recent call last):
    ...
    ValueError: Demo.rate must be a finite number > 0, got -1.0
    >>> describe(fields_of(Demo)[1])
    'a mode (one of: a, b)'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

_BOUNDS = (("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
           ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b))


def param(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple | None = None,
    affects_result: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field carrying its description, bounds and choices.

    ``affects_result``: the field changes what a training produces (its weights), so it keys
    checkpoints and resumes; fields without it (device, resume, logging) do not.
    """
    metadata = {"help": help, "choices": choices, "affects_result": affects_result,
                **{name: bound for name, bound in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le))
                   if bound is not None}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields_of(cls_or_instance: Any) -> tuple[dataclasses.Field, ...]:
    """The dataclass fields of a config class (or instance), in declaration order."""
    return dataclasses.fields(cls_or_instance)


def field_type(cls: type, field: dataclasses.Field) -> tuple[type, bool]:
    """``(base type, optional)`` of a field: ``int | None`` gives ``(int, True)``; tuples of
    strings give ``(tuple, False)``."""
    hint = typing.get_type_hints(cls)[field.name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    origin = typing.get_origin(hint)
    return (origin or hint), optional


def describe(field: dataclasses.Field) -> str:
    """The field's description with its choices or bounds, for help texts and the Launchpad."""
    meta = field.metadata
    text = meta.get("help", "")
    extra = []
    if meta.get("choices"):
        extra.append("one of: " + ", ".join(str(c) for c in meta["choices"]))
    for name, symbol, _ in _BOUNDS:
        if name in meta:
            extra.append(f"{symbol} {meta[name]}")
    return f"{text} ({'; '.join(extra)})" if extra else text


def result_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields declared with ``affects_result=True``."""
    return tuple(f.name for f in fields_of(cls) if f.metadata.get("affects_result"))


def requirement(cls: type, field: dataclasses.Field) -> str:
    """What a value of ``field`` must be, in words: ``a positive integer``, ``in [0, 1)``,
    ``one of ('a', 'b')``, ``a finite number > 0``."""
    meta = field.metadata
    if meta.get("choices"):
        return f"one of {tuple(meta['choices'])!r}"
    base, _ = field_type(cls, field)
    bounds = {name: meta[name] for name, _, _ in _BOUNDS if name in meta}
    if base is int and bounds == {"ge": 1}:
        return "a positive integer"
    if base is float and len(bounds) == 2 and ("ge" in bounds or "gt" in bounds):
        low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}"
        high = f"{bounds['lt']})" if "lt" in bounds else f"{bounds['le']}]"
        return f"in {low}, {high}"
    kind = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string",
            tuple: "a list", list: "a list"}.get(base, getattr(base, "__name__", str(base)))
    return " ".join([kind] + [f"{symbol} {bounds[name]}" for name, symbol, _ in _BOUNDS if name in bounds])


def check(instance: Any) -> Any:
    """Raise ``ValueError`` naming the first field whose value has the wrong type, is out of its
    bounds or not among its choices (``GPTConfig.head_count must be a positive integer, got 0``);
    return ``instance`` when all are fine."""
    cls = type(instance)
    for field in fields_of(cls):
        value = getattr(instance, field.name)
        base, optional = field_type(cls, field)
        if value is None and optional:
            continue
        if base is bool:
            ok = isinstance(value, bool)
        elif base is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif base in (tuple, list):
            ok = isinstance(value, (tuple, list))
        else:
            ok = isinstance(value, base)
        meta = field.metadata
        if ok and meta.get("choices"):
            ok = value in meta["choices"]
        if ok:
            ok = all(holds(value, meta[name]) for name, _, holds in _BOUNDS if name in meta)
        if not ok:
            raise ValueError(f"{cls.__name__}.{field.name} must be {requirement(cls, field)}, got {value!r}")
    return instance
