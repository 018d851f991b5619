"""Writing RON (Rusty Object Notation) in the shape gpt-rs's serde writes it.

The counterpart of ``gpt_pipeline.interop.ron`` (the reader): ``dumps`` turns dicts,
``RonStruct``s, lists, tuples, numbers, strings and ``Char``s into RON text that ``loads`` reads
back. It is used to write gpt-rs-format files from our objects (for tests and for users going
back to gpt-rs); nothing here parses.
"""

from __future__ import annotations

import math
from typing import Any

from gpt_pipeline.interop.ron import Char, RonStruct

def _quote(text: str, quote: str) -> str:
    """A RON string (``quote='"'``) or char literal of ``text``, escaped as Rust's escape_debug."""
    out = []
    for c in text:
        if c == "\\" or c == quote:
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif not c.isprintable():
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    return quote + "".join(out) + quote


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # always holds '.' or 'e': 1.0, 0.0002, 1e-05
    if isinstance(value, Char):
        if len(value) != 1:
            raise ValueError(f"a RON char must be one character, got {value!r}")
        return _quote(value, "'")
    if isinstance(value, str):
        return _quote(value, '"')
    if value is None:
        return "None"
    raise ValueError(f"cannot write a {type(value).__name__} as RON: {value!r}")


def _container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple))


def _flat(value: Any) -> bool:
    """Whether ``value`` is written on one line: scalars, and tuples/structs of flat values."""
    if isinstance(value, (list, dict)) and not isinstance(value, RonStruct):
        return not value
    if isinstance(value, (tuple, RonStruct)):
        return all(map(_flat, value.values() if isinstance(value, dict) else value))
    return True


def dumps(value: Any, indent: str = "    ", _level: int = 0) -> str:
    """RON text of ``value`` (the types ``loads`` returns): lists of scalars, and tuples and structs
    of those, on one line; other containers, and a struct at the top, one element per line.

    Example:
        >>> print(dumps(RonStruct({"ids": {Char("a"): 0}, "pairs": [(1, 2)]})))
        (
            ids: {'a': 0},
            pairs: [
                (1, 2),
            ],
        )
    """
    if isinstance(value, RonStruct):
        items = [f"{key}: " for key in value]
        children = list(value.values())
        opening, closing = (value.name or "") + "(", ")"
    elif isinstance(value, dict):
        items = [dumps(key, indent, _level + 1) + ": " for key in value]
        children = list(value.values())
        opening, closing = "{", "}"
    elif isinstance(value, (list, tuple)):
        if all(type(c) is int for c in value):  # fast path: token id lists
            inner = ", ".join(map(str, value))
            return f"[{inner}]" if isinstance(value, list) else f"({inner})"
        items = [""] * len(value)
        children = list(value)
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
    else:
        return _scalar(value)
    top_struct = _level == 0 and isinstance(value, RonStruct)  # a file's struct: one field a line
    list_of_containers = isinstance(value, list) and any(map(_container, children))
    if not top_struct and not list_of_containers and all(map(_flat, children)):
        return opening + ", ".join(p + dumps(c) for p, c in zip(items, children)) + closing
    pad = indent * (_level + 1)
    lines = [f"{pad}{p}{dumps(c, indent, _level + 1)}," for p, c in zip(items, children)]
    return opening + "\n" + "\n".join(lines) + "\n" + indent * _level + closing
