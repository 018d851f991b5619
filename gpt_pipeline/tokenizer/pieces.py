"""gpt-rs's merge boundaries, stated as a way of cutting text into independent pieces.

gpt-rs never merges a pair that involves a barrier (``"`` or ``\\n``) and never merges (a, b)
when b starts with a space. Since a space can then only stand at the start of a token, no merge
ever crosses a space or a barrier: cutting the text before every space and around every barrier
gives pieces inside which all merges happen, independently of their neighbours. This module
owns that cut (one regular expression, shared with the Hugging Face export) and counting the
distinct pieces of a corpus. It knows nothing about merges or ids.

Speed: cutting before spaces only is a literal split, which polars does in Rust on all cores
several times faster than the full regular expression. Such a "chunk" (a space, then the next
word with its quotes and newlines) is cut around its barriers afterwards, once per *distinct*
chunk. Encoding needs no second cut at all: no learnt merge involves a barrier, so
a chunk encodes to the same ids as its pieces one after the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa

SPACE = " "
BARRIERS = ('"', "\n")
COUNT_SLICE_BYTES = 1 << 22  # text counted at once: memory ~ 30x this, whatever the batch size

# A space with everything up to the next space or barrier; a run without spaces or barriers
# (text start, or after a barrier); a barrier alone. Every character falls in exactly one piece.
PIECE_PATTERN = ' [^ "\\n]*|[^ "\\n]+|["\\n]'
_PIECE_RE = re.compile(PIECE_PATTERN)


def split_pieces(text: str) -> list[str]:
    """Cut ``text`` into gpt-rs's merge-independent pieces (their concatenation is ``text``).

    Example:
        >>> split_pieces('He said  "hi, you"\\nok')
        ['He', ' said', ' ', ' ', '"', 'hi,', ' you', '"', '\\n', 'ok']
    """
    return _PIECE_RE.findall(text)


def as_string_series(texts: Iterable[str]) -> pl.Series:
    """``texts`` as a polars String series; a null or non-string entry is a ``ValueError``.

    Example:
        >>> as_string_series(["a b", ""]).to_list()
        ['a b', '']
    """
    if isinstance(texts, pl.Series):
        series = texts
    elif isinstance(texts, (pa.Array, pa.ChunkedArray)):
        series = pl.Series("text", texts)
        if series.dtype == pl.Categorical:
            series = series.cast(pl.String)
    else:
        texts = texts if isinstance(texts, list) else list(texts)
        try:
            series = pl.Series("text", texts, dtype=pl.String, strict=True)
        except (TypeError, pl.exceptions.PolarsError) as error:
            bad = next((t for t in texts if not isinstance(t, str)), None)
            raise ValueError(f"texts must be strings; found {type(bad).__name__}: {bad!r}") from error
    if series.dtype != pl.String:
        raise ValueError(f"texts must be strings; got a polars series of {series.dtype}")
    if series.null_count():
        raise ValueError(f"texts must be strings; found {series.null_count()} null entries")
    return series


def count_pieces(texts: Iterable[str]) -> dict[str, int]:
    """How often each distinct piece occurs in ``texts`` (pieces never span two texts).

    Example:
        >>> sorted(count_pieces(['a b a', 'b "a\\nb']).items())
        [('\\n', 1), (' ', 1), (' a', 1), (' b', 1), ('"', 1), ('a', 2), ('b', 2)]
    """
    counter = PieceCounter()
    counter.add(texts)
    return counter.counts()


class PieceCounter:
    """Piece counts of a corpus that arrives in batches of texts; only the counts are kept.

    Each batch is cut before its spaces (polars, in Rust on all cores) and its distinct words
    are counted; the counts join a running table of distinct words (each as if a space came
    before it) and of the words that start a text (which have none). Memory grows with the
    number of distinct words, not with the corpus; a large batch is counted in slices of
    ``COUNT_SLICE_BYTES`` of text, so that it does not matter how large the caller's batches
    are. ``counts()`` turns the words into pieces
    at the end, once per distinct word. Any split of a corpus into batches gives the same counts
    as ``count_pieces`` on the whole of it.

    Example:
        >>> counter = PieceCounter()
        >>> counter.add(['a b a']); counter.add(['b "a\\nb'])
        >>> counter.counts() == count_pieces(['a b a', 'b "a\\nb']), counter.texts
        (True, 2)
    """

    def __init__(self) -> None:
        self._every = pl.DataFrame(schema={"w": pl.String, "n": pl.Int64})  # every word
        self._first = pl.DataFrame(schema={"w": pl.String, "n": pl.Int64})  # first word of a text
        self.texts = 0

    def add(self, texts: Iterable[str] | pl.Series | pa.Array | pa.ChunkedArray) -> None:
        """Count the texts of one batch (a polars or Arrow string array, or any iterable of str)."""
        if isinstance(texts, str):
            raise ValueError(f"a batch is a collection of texts, not one string: {texts[:40]!r}")
        series = as_string_series(texts)
        for part in _slices(series, COUNT_SLICE_BYTES):
            frame = part.to_frame("t").lazy()
            # text i = words[0] + " " + words[1] + " " + ...; words[0] is what precedes any space
            every = frame.select(pl.col("t").str.split(" ").explode().alias("w"))
            first = frame.select(pl.col("t").str.extract("^([^ ]*)", 1).alias("w"))
            every, first = pl.collect_all([_count(every), _count(first)])
            self._every = _merge(self._every, every)
            self._first = _merge(self._first, first)
        self.texts += len(series)

    def update(self, other: PieceCounter) -> None:
        """Add the counts of ``other`` (another part of the same corpus) to these."""
        self._every = _merge(self._every, other._every)
        self._first = _merge(self._first, other._first)
        self.texts += other.texts

    def frame(self) -> pl.DataFrame:
        """Every distinct piece (``piece``) and how often it occurs (``n``, Int64), in no set order."""
        words = self._every.join(self._first, on="w", how="left", suffix="_first").fill_null(0)
        chunks = pl.concat(
            [
                words.select((SPACE + pl.col("w")).alias("chunk"), (pl.col("n") - pl.col("n_first")).alias("n")),
                self._first.select(pl.col("w").alias("chunk"), "n"),
            ]
        ).filter(pl.col("n") > 0)
        return (
            chunks.lazy()
            .with_columns(pl.col("chunk").str.extract_all(PIECE_PATTERN))
            .explode("chunk")
            .drop_nulls("chunk")
            .group_by("chunk")
            .agg(pl.col("n").sum())
            .rename({"chunk": "piece"})
            .collect()
        )

    def counts(self) -> dict[str, int]:
        """Every distinct piece and how often it occurs."""
        frame = self.frame()
        return dict(zip(frame["piece"].to_list(), frame["n"].to_list()))


def chunk_table(series: pl.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The distinct chunks of ``series`` (texts cut before every space), and where they occur.

    Returns ``(chunks, occurrence, per_text)``: ``chunks[occurrence[j]]`` is the j-th chunk of
    the corpus (texts one after the other) and text i has ``per_text[i]`` chunks; joined, the
    chunks of a text give the text back. Chunks may be empty (an empty text) and may hold
    barriers (``"``, ``\\n``) anywhere.

    Example:
        >>> chunks, occurrence, per_text = chunk_table(pl.Series(["a b", " b", ""]))
        >>> [chunks[j] for j in occurrence], per_text.tolist()
        (['a', ' b', '', ' b', ''], [2, 2, 1])
    """
    words = series.str.split(" ")
    per_text = words.list.len().to_numpy().astype(np.int64)  # [texts], at least 1 each
    flat = words.explode()  # [chunks in the corpus]
    distinct = flat.to_frame("w").lazy().select(pl.col("w").unique()).collect().to_series()
    occurrence = flat.cast(pl.Enum(distinct)).to_physical().to_numpy().astype(np.int64)
    # Every chunk got a space before its word; the first of each text must not have one.
    first_at = np.cumsum(per_text) - per_text  # [texts]
    first_words, first_index = np.unique(occurrence[first_at], return_inverse=True)
    occurrence[first_at] = len(distinct) + first_index
    words_list = distinct.to_list()
    chunks = [SPACE + w for w in words_list] + [words_list[i] for i in first_words.tolist()]
    used = np.zeros(len(chunks), dtype=bool)
    used[occurrence] = True
    if not used.all():  # words seen only first in their text: drop their spaced chunk
        occurrence = (np.cumsum(used) - 1)[occurrence]
        chunks = [chunk for chunk, keep in zip(chunks, used.tolist()) if keep]
    return chunks, occurrence, per_text


def _count(words: pl.LazyFrame) -> pl.LazyFrame:
    """Distinct values of the column ``w`` and how often each occurs, ``n`` (Int64)."""
    return words.group_by("w").len("n").with_columns(pl.col("n").cast(pl.Int64))


def _slices(series: pl.Series, max_bytes: int):
    """``series`` in consecutive slices of at most ``max_bytes`` of text (or one text).

    Example:
        >>> [s.to_list() for s in _slices(pl.Series(["ab", "cd", "e", "fgh"]), 4)]
        [['ab', 'cd'], ['e', 'fgh']]
    """
    ends = series.str.len_bytes().cum_sum().to_numpy()  # [texts] bytes up to each text's end
    if not len(ends) or ends[-1] <= max_bytes:
        if len(ends):
            yield series
        return
    start = 0
    while start < len(ends):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + max_bytes, side="right")), start + 1)
        yield series[start:stop]
        start = stop


def _merge(total: pl.DataFrame, more: pl.DataFrame) -> pl.DataFrame:
    """Two tables of counts (``w``, ``n``) as one."""
    if not len(total):
        return more
    return pl.concat([total, more]).lazy().group_by("w").agg(pl.col("n").sum()).collect()
