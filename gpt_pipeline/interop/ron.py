"""Read (and write) the subset of RON, Rust's Rusty Object Notation, that gpt-rs's files use.

What ``loads`` reads, with what it returns:

- structs ``Name(field: value, ...)`` and anonymous ``(field: value)`` -> ``RonStruct`` (a ``dict``
  of field name to value, with ``.name`` the struct name or ``None``);
- maps ``{key: value}`` -> ``dict`` (keys must be hashable: scalars or tuples);
- lists ``[a, b]`` -> ``list``; tuples ``(a, b)`` and named tuples ``Name(a, b)`` -> ``tuple``;
  the unit ``()`` -> ``()``; ``Some(x)`` -> ``x`` and ``None`` -> ``None``;
- integers (decimal, ``0x``/``0o``/``0b``, ``_`` separators) -> ``int``; floats (``1.5``, ``2e-4``,
  ``-.5``, ``inf``, ``NaN``) -> ``float``; ``true``/``false`` -> ``bool``;
- char literals ``'a'`` -> ``Char`` (a one-character ``str``); string literals ``"..."`` and raw
  strings ``r#"..."#`` -> ``str``; escapes ``\\n \\t \\r \\0 \\b \\f \\\\ \\" \\' \\/ \\xHH \\u{H..}
  \\uHHHH``;
- ``//`` and (nested) ``/* */`` comments, trailing commas, ``#![enable(...)]`` attributes at the top.

Bad input raises ``RonError`` (a ``ValueError``) whose message starts with ``line L, column C``
(both 1-based, columns in characters). Not read: unit enum variants (``Foo`` alone), byte strings,
number type suffixes (``1u8``). ``ron_write.dumps`` writes the same subset back (what gpt-rs's serde would).

Speed: a list of plain integers (gpt-rs's encoded dataset: millions of ids) is read with one
regular expression and ``int`` per id instead of the general per-token parser.
"""

from __future__ import annotations

import re
from typing import Any


class RonError(ValueError):
    """Text that is not RON (of the subset read here); the message names line and column."""


class RonStruct(dict):
    """A RON struct: its fields as a ``dict``, and its ``name`` (``None`` when anonymous)."""

    def __init__(self, fields: dict | None = None, name: str | None = None):
        super().__init__(fields or {})
        self.name = name

    def __repr__(self) -> str:
        return f"RonStruct({dict.__repr__(self)}, name={self.name!r})"


class Char(str):
    """A RON char literal (``'a'``); a one-character ``str`` that ``dumps`` writes in single quotes."""


_WS = re.compile(r"(?:\s+|//[^\n]*)*")  # whitespace and line comments (block comments: skip)
_IDENT = re.compile(r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(
    r"[+-]?(?:0x[0-9A-Fa-f_]+|0o[0-7_]+|0b[01_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)"
)
_INT_LIST = re.compile(r"\[([0-9\s,+-]*)\]")  # fast path: a list of plain decimal integers
_STRING_PLAIN = re.compile(r'[^"\\]*')
_RAW_OPEN = re.compile(r'r(#*)"')  # r"..." or r#"..."# (r#name alone is a raw identifier)
_HEX = re.compile(r"[0-9A-Fa-f]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "\\": "\\",
            '"': '"', "'": "'", "/": "/"}
_MAX_DEPTH = 200


def location(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column (in characters) of offset ``pos`` in ``text``.

    Example:
        >>> location("ab\\ncd", 4)
        (2, 2)
    """
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0

    # ---- errors and whitespace ----------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> RonError:
        pos = self.pos if pos is None else pos
        line, column = location(self.text, pos)
        return RonError(f"line {line}, column {column}: {message}")

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos])

    def skip(self) -> None:
        text = self.text
        while True:
            self.pos = _WS.match(text, self.pos).end()
            if not text.startswith("/*", self.pos):
                return
            start, depth, i = self.pos, 0, self.pos
            while True:
                open_at, close_at = text.find("/*", i), text.find("*/", i)
                if close_at < 0:
                    raise self.error("unterminated block comment", start)
                if 0 <= open_at < close_at:
                    depth, i = depth + 1, open_at + 2
                else:
                    depth, i = depth - 1, close_at + 2
                    if depth == 0:
                        break
            self.pos = i

    def expect(self, char: str) -> None:
        self.skip()
        if not self.text.startswith(char, self.pos):
            raise self.error(f"expected {char!r}, found {self.found()}")
        self.pos += 1

    def at(self, char: str) -> bool:
        """Skip whitespace; whether the next character is ``char`` (not consumed)."""
        self.skip()
        return self.text.startswith(char, self.pos)

    # ---- values --------------------------------------------------------------------------------
    def value(self) -> Any:
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("expected a value, found end of input")
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(f"values nested more than {_MAX_DEPTH} deep")
        try:
            c = self.text[self.pos]
            if c == "[":
                return self.list_()
            if c == "{":
                return self.map_()
            if c == "(":
                return self.parens(None)
            if c == '"':
                return self.string()
            if c == "'":
                return self.char()
            if c == "r" and _RAW_OPEN.match(self.text, self.pos):
                return self.raw_string()
            if c.isdigit() or c in "+-.":
                return self.number()
            if _IDENT.match(self.text, self.pos):
                return self.identifier_value()
            raise self.error(f"expected a value, found {self.found()}")
        finally:
            self.depth -= 1

    def items(self, close: str, item) -> None:
        """Call ``item()`` for each comma-separated element up to ``close`` (trailing comma allowed)."""
        while True:
            if self.at(close):
                self.pos += 1
                return
            item()
            if self.at(","):
                self.pos += 1
            elif self.at(close):
                self.pos += 1
                return
            else:
                raise self.error(f"expected ',' or {close!r}, found {self.found()}")

    def list_(self) -> list:
        fast = _INT_LIST.match(self.text, self.pos)
        if fast:
            parts = fast.group(1).split(",")
            if parts and not parts[-1].strip():
                parts.pop()  # trailing comma, or the empty list
            try:
                values = [int(p) for p in parts]
            except ValueError:
                values = None  # something odd (an empty element, "1 2"): the slow path says where
            else:
                self.pos = fast.end()
                return values
        self.pos += 1
        values: list = []
        self.items("]", lambda: values.append(self.value()))
        return values

    def map_(self) -> dict:
        self.pos += 1
        result: dict = {}

        def entry() -> None:
            key_at = self.pos
            key = self.value()
            try:
                hash(key)
            except TypeError:
                kind = type(key).__name__
                raise self.error(f"a map key must be a scalar or a tuple, got a {kind}", key_at) from None
            if key in result:
                raise self.error(f"duplicate map key {key!r}", key_at)
            self.expect(":")
            result[key] = self.value()

        self.items("}", entry)
        return result

    def parens(self, name: str | None) -> Any:
        """After ``(`` (or ``Name(``): a struct when the first element is ``field:``, else a tuple."""
        self.pos += 1
        self.skip()
        ident = _IDENT.match(self.text, self.pos)
        if ident:
            after = _WS.match(self.text, ident.end()).end()
            if self.text.startswith(":", after) and not self.text.startswith("::", after):
                fields = RonStruct(name=name)

                def field() -> None:
                    self.skip()
                    match = _IDENT.match(self.text, self.pos)
                    if not match:
                        raise self.error(f"expected a field name, found {self.found()}")
                    key = match.group().removeprefix("r#")
                    if key in fields:
                        raise self.error(f"duplicate field {key!r}")
                    self.pos = match.end()
                    self.expect(":")
                    fields[key] = self.value()

                self.items(")", field)
                return fields
        values: list = []
        self.items(")", lambda: values.append(self.value()))
        return tuple(values)

    def identifier_value(self) -> Any:
        start = self.pos
        match = _IDENT.match(self.text, self.pos)
        word = match.group()
        self.pos = match.end()
        if word in ("true", "false"):
            return word == "true"
        if word in ("inf", "NaN"):
            return float(word)
        if word == "None":
            return None
        if self.at("("):
            if word == "Some":
                self.pos += 1
                inner = self.value()
                self.expect(")")
                return inner
            return self.parens(word.removeprefix("r#"))
        raise self.error(f"unsupported bare identifier {word!r} (unit enum variants are not read)", start)

    def number(self) -> int | float:
        start = self.pos
        text = self.text
        sign = text[start] if text[start] in "+-" else ""
        word = _IDENT.match(text, start + len(sign)) if sign else None
        if word and word.group() in ("inf", "NaN"):
            self.pos = word.end()
            return float(sign + word.group())
        match = _NUMBER.match(text, start)
        if not match or match.end() == start + len(sign):
            raise self.error(f"expected a number, found {self.found()}")
        self.pos = match.end()
        if self.pos < len(text) and (text[self.pos].isalnum() or text[self.pos] == "_"):
            raise self.error(f"invalid number {text[start:self.pos + 1]!r}", start)
        token = match.group().replace("_", "")
        body = token.lstrip("+-")
        try:
            if body[:2] in ("0x", "0o", "0b"):
                return int(token, 0)
            if any(c in body for c in ".eE"):
                return float(token)
            return int(token)
        except ValueError:
            raise self.error(f"invalid number {match.group()!r}", start) from None

    def escape(self, quote: str) -> str:
        """The character of the escape at ``self.pos`` (just after the backslash)."""
        text, start = self.text, self.pos - 1
        c = text[self.pos] if self.pos < len(text) else ""
        self.pos += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c == "u" and text.startswith("{", self.pos):  # \u{1F600}
            end = text.find("}", self.pos)
            digits = text[self.pos + 1 : end].replace("_", "") if end > 0 else ""
            self.pos = end + 1 if end > 0 else self.pos + 1
            valid = 1 <= len(digits) <= 6
        elif c in ("u", "x"):  # \u00e9, \x41
            width = 4 if c == "u" else 2
            digits = text[self.pos : self.pos + width]
            self.pos += width
            valid = len(digits) == width
        else:
            raise self.error(f"unknown escape \\{c or ' at end of input'} in a {quote} literal", start)
        if not (valid and _HEX.fullmatch(digits)):
            raise self.error(f"invalid escape {text[start:self.pos]!r}", start)
        code = int(digits, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.error(f"escape {text[start:self.pos]!r} is not a Unicode scalar value", start)
        return chr(code)

    def string(self) -> str:
        start = self.pos
        self.pos += 1
        parts = []
        text = self.text
        while True:
            plain = _STRING_PLAIN.match(text, self.pos)
            parts.append(plain.group())
            self.pos = plain.end()
            if self.pos >= len(text):
                raise self.error("unterminated string", start)
            if text[self.pos] == '"':
                self.pos += 1
                return "".join(parts)
            self.pos += 1  # the backslash
            parts.append(self.escape("string"))

    def raw_string(self) -> str:
        start = self.pos
        match = _RAW_OPEN.match(self.text, self.pos)
        close = '"' + match.group(1)
        end = self.text.find(close, match.end())
        if end < 0:
            raise self.error("unterminated raw string", start)
        self.pos = end + len(close)
        return self.text[match.end() : end]

    def char(self) -> Char:
        start = self.pos
        self.pos += 1
        if self.pos >= len(self.text):
            raise self.error("unterminated char literal", start)
        c = self.text[self.pos]
        if c == "\\":
            self.pos += 1
            value = self.escape("char")
        elif c == "'":
            raise self.error("empty char literal", start)
        else:
            value, self.pos = c, self.pos + 1
        if not self.text.startswith("'", self.pos):
            raise self.error("char literal holds more than one character (strings use double quotes)", start)
        self.pos += 1
        return Char(value)

    def document(self) -> Any:
        self.skip()
        while self.text.startswith("#!", self.pos):  # #![enable(implicit_some)] and the like
            end = self.text.find("]", self.pos)
            if not self.text.startswith("[", self.pos + 2) or end < 0:
                raise self.error("malformed attribute: expected #![...]")
            self.pos = end + 1
            self.skip()
        value = self.value()
        self.skip()
        if self.pos < len(self.text):
            raise self.error(f"unexpected {self.found()} after the value")
        return value


def loads(text: str) -> Any:
    """The value of the RON document ``text``; ``RonError`` (with line and column) if it is not one.

    Example:
        >>> loads("Config(size: 2, rate: 2e-4, tags: ['a', '\\\\n'], pair: (1, -2),)")
        RonStruct({'size': 2, 'rate': 0.0002, 'tags': ['a', '\\n'], 'pair': (1, -2)}, name='Config')
        >>> loads("[1, 2,\\n  3 4]")
        Traceback (most recent call last):
        ...
        gpt_pipeline.interop.ron.RonError: line 2, column 5: expected ',' or ']', found '4'
    """
    if not isinstance(text, str):
        raise RonError(f"RON text must be a str, got {type(text).__name__}")
    return _Parser(text).document()


def load(path) -> Any:
    """``loads`` of the UTF-8 file ``path``; errors name the file, line and column."""
    with open(path, encoding="utf-8-sig") as handle:  # a byte order mark is not RON
        text = handle.read()
    try:
        return loads(text)
    except RonError as error:
        raise RonError(f"{path}: {error}") from None
