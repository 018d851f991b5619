"""Our tokenizer file: versioned JSON, and a vocabulary listing for people.

The JSON holds a format name and version, the rules the merges were learnt with, the alphabet
(ids 0..n-1) and the merges (merge k makes id n + k), one merge per line so that diffs stay
readable. Writing is deterministic: equal tokenizers give byte-identical files. Reading checks
everything a hand-edited or foreign file could get wrong (format, version, rules, ids, gpt-rs's
merge restrictions) and names the problem. This module does no file I/O: ``bundle`` writes the strings
atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from gpt_pipeline.tokenizer.pieces import BARRIERS, PIECE_PATTERN, SPACE

FORMAT = "gpt-pipeline-bpe"
VERSION = 1
RULES = {
    "alphabet": "the distinct characters of the corpus, ids in ascending code point order",
    "pair_count": "adjacent pairs within each text, overlapping pairs counted",
    "selection": "the most frequent pair; ties go to the largest (left id, right id)",
    "replacement": "left to right without overlap; merge k creates id len(alphabet) + k",
    "barriers": list(BARRIERS),
    "no_merge_before": SPACE,
    "pieces": PIECE_PATTERN,
}


def validate(
    alphabet: Sequence[str], merges: Sequence[Sequence[int]]
) -> tuple[list[str], list[tuple[int, int]]]:
    """``alphabet`` and ``merges`` as lists, after checking that gpt-rs could have learnt them.

    Example:
        >>> validate([" ", "a"], [[1, 1], [0, 2]])
        ([' ', 'a'], [(1, 1), (0, 2)])
        >>> validate([" ", "a"], [[1, 0]])
        Traceback (most recent call last):
        ...
        ValueError: merge 0 (1, 0) breaks gpt-rs's rules: its right token starts with a space
    """
    alphabet = list(alphabet)
    if not alphabet:
        raise ValueError("the alphabet is empty")
    for i, c in enumerate(alphabet):
        if not isinstance(c, str) or len(c) != 1:
            raise ValueError(f"alphabet entry {i} must be one character, got {c!r}")
        if i and ord(c) <= ord(alphabet[i - 1]):
            raise ValueError(
                f"alphabet must be in strictly ascending code point order; {c!r} follows {alphabet[i - 1]!r}"
            )
    texts = list(alphabet)
    seen: set[tuple[int, int]] = set()
    clean: list[tuple[int, int]] = []
    for k, merge in enumerate(merges):
        if (
            not isinstance(merge, (list, tuple))
            or len(merge) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(texts) for i in merge)
        ):
            raise ValueError(
                f"merge {k} must be two ids of existing tokens (below {len(texts)}), got {merge!r}"
            )
        pair = (int(merge[0]), int(merge[1]))
        left, right = texts[pair[0]], texts[pair[1]]
        if left in BARRIERS or right in BARRIERS:
            raise ValueError(f"merge {k} {pair} breaks gpt-rs's rules: it involves a barrier {BARRIERS!r}")
        if right.startswith(SPACE):
            raise ValueError(f"merge {k} {pair} breaks gpt-rs's rules: its right token starts with a space")
        if pair in seen:
            raise ValueError(f"merge {k} repeats the pair {pair}")
        seen.add(pair)
        clean.append(pair)
        texts.append(left + right)
    return alphabet, clean


def digest(alphabet: Sequence[str], merges: Sequence[Sequence[int]]) -> str:
    """sha256 of the canonical alphabet and merges: the tokenizer's content, whatever the file.

    Example:
        >>> digest(["a", "b"], [(0, 1)]) == digest(["a", "b"], [[0, 1]]) != digest(["a", "b"], [])
        True
    """
    canonical = json.dumps([list(alphabet), [list(m) for m in merges]], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dumps(
    alphabet: Sequence[str], merges: Sequence[tuple[int, int]], provenance: Mapping | None = None
) -> str:
    """The JSON file for a tokenizer (deterministic: same input, same bytes); ``provenance``
    (what it was trained on, see ``gpt_pipeline.provenance``) adds a ``provenance`` entry.

    Example:
        >>> print(dumps(["a", "b"], [(0, 1)]), end="")  # doctest: +ELLIPSIS
        {
          "format": "gpt-pipeline-bpe",
          "version": 1,
          "rules": {
        ...
          "vocab_size": 3,
          "alphabet": ["a", "b"],
          "merges": [
            [0, 1]
          ]
        }
    """
    rules = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in RULES.items())
    merge_lines = ",\n".join(f"    [{a}, {b}]" for a, b in merges)
    return (
        "{\n"
        f'  "format": {json.dumps(FORMAT)},\n'
        f'  "version": {VERSION},\n'
        f'  "rules": {{\n{rules}\n  }},\n'
        f'  "vocab_size": {len(alphabet) + len(merges)},\n'
        + (f'  "provenance": {json.dumps(dict(provenance), sort_keys=True)},\n' if provenance else "")
        + f'  "alphabet": {json.dumps(list(alphabet), ensure_ascii=False)},\n'
        f'  "merges": [\n{merge_lines}\n  ]\n'
        "}\n"
    )


def provenance_of(text: str) -> dict | None:
    """The ``provenance`` entry of a tokenizer file written by ``dumps``, if any."""
    try:
        value = json.loads(text).get("provenance")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def loads(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The (alphabet, merges) of a file written by ``dumps``; anything else raises ``ValueError``.

    Example:
        >>> loads(dumps(["a", "b"], [(0, 1)]))
        (['a', 'b'], [(0, 1)])
        >>> loads('{"version": "1.0", "model": {"type": "BPE"}}')
        Traceback (most recent call last):
        ...
        ValueError: a Hugging Face tokenizer.json, not a gpt-pipeline-bpe file: read our tokenizer file (a tokenizer bundle's bpe_tokenizer.json) instead
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a {FORMAT} file: invalid JSON ({error})") from None
    if isinstance(data, dict) and "format" not in data and isinstance(data.get("model"), dict):
        raise ValueError(f"a Hugging Face tokenizer.json, not a {FORMAT} file: read our tokenizer file "
                         "(a tokenizer bundle's bpe_tokenizer.json) instead")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"unknown tokenizer format {found!r}; expected {FORMAT!r}")
    if data.get("version") != VERSION:
        version = data.get("version")
        raise ValueError(f"unsupported {FORMAT} version {version!r}; this code reads version {VERSION}")
    if data.get("rules") != RULES:
        rules = data.get("rules")
        differ = sorted(set(RULES) ^ set(rules)) if isinstance(rules, dict) else ["rules"]
        differ += sorted(k for k in RULES if isinstance(rules, dict) and k in rules and rules[k] != RULES[k])
        raise ValueError(f"the file's tokenizer rules differ from ours in {differ}")
    alphabet, merges = validate(data.get("alphabet") or [], data.get("merges") or [])
    if data.get("vocab_size") != len(alphabet) + len(merges):
        raise ValueError(
            f"vocab_size {data.get('vocab_size')!r} does not match "
            f"{len(alphabet)} characters + {len(merges)} merges"
        )
    return alphabet, merges


def visible(text: str) -> str:
    """``text`` with spaces as ␣, newlines as ↵ and other invisible characters escaped.

    Example:
        >>> visible(' the\\n\\t"')
        '␣the↵\\\\t"'
    """
    out = []
    for c in text:
        if c == " ":
            out.append("␣")
        elif c == "\n":
            out.append("↵")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(repr(c)[1:-1])
    return "".join(out)


def vocab_listing(alphabet: Sequence[str], merges: Sequence[tuple[int, int]], texts: Sequence[str]) -> str:
    """One line per token: id, visible text, and what it is (character or merge of two ids).

    Example:
        >>> listing = vocab_listing([" ", "a"], [(0, 1)], [" ", "a", " a"])
        >>> print(listing, end="")  # doctest: +NORMALIZE_WHITESPACE
        # gpt-pipeline-bpe vocabulary: 3 tokens = 2 characters + 1 merges
        # ␣ is a space, ↵ a newline; a merged token shows the two tokens it joins
        id	token	made of
        0	␣	character U+0020
        1	a	character U+0061
        2	␣a	0 + 1 (␣ + a)
    """
    lines = [
        f"# {FORMAT} vocabulary: {len(texts)} tokens = {len(alphabet)} characters + {len(merges)} merges",
        "# ␣ is a space, ↵ a newline; a merged token shows the two tokens it joins",
        "id\ttoken\tmade of",
    ]
    for i, c in enumerate(alphabet):
        lines.append(f"{i}\t{visible(c)}\tcharacter U+{ord(c):04X}")
    for k, (a, b) in enumerate(merges):
        i = len(alphabet) + k
        lines.append(f"{i}\t{visible(texts[i])}\t{a} + {b} ({visible(texts[a])} + {visible(texts[b])})")
    return "\n".join(lines) + "\n"
