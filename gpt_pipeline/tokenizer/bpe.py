"""``BPETokenizer``: gpt-rs's character-level BPE tokenizer, trained, applied and stored.

What it does: learns merges with exactly gpt-rs's rules (``training``), encodes and decodes text
(``encoding``), and turns itself into versioned JSON and a readable vocabulary listing
(``fileformat``) or a Hugging Face ``tokenizer.json`` (``huggingface``). The files those go to are
``bundle``'s business (``load`` reads one JSON file of ours).

What it does differently from gpt-rs, on purpose: training counts pairs incrementally over the
distinct pieces instead of recounting the corpus per merge (same merges, seconds not hours);
a character never seen in training raises a ``ValueError`` naming it and where it is (gpt-rs
panics), or is dropped with ``unknown="skip"``; the encoded dataset is not stored with it.
It does not know about Dagster, MLflow or Parquet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from gpt_pipeline.tokenizer import fileformat
from gpt_pipeline.tokenizer.merge_encoding import MergeEncoder, UnseenCharacters
from gpt_pipeline.tokenizer.pieces import PieceCounter, as_string_series
from gpt_pipeline.tokenizer.merge_learning import learn_merges

UNKNOWN_MODES = ("error", "skip")


class BPETokenizer:
    """A trained tokenizer: ``alphabet`` (ids 0..n-1) and ``merges`` (merge k makes id n + k).

    Example:
        >>> tok = BPETokenizer.train(["the cat", "the hat"], vocab_size=9)
        >>> tok.alphabet, tok.merges
        ([' ', 'a', 'c', 'e', 'h', 't'], [(5, 4), (6, 3), (1, 5)])
        >>> [tok.token_text(i) for i in range(6, 9)], tok.encode("the hat")
        (['th', 'the', 'at'], [7, 0, 4, 8])

        (t h), (h e) and (a t) all count 2: the largest pair, (t h) = (5, 4), wins the tie.
    """

    def __init__(self, alphabet: Sequence[str], merges: Sequence[tuple[int, int]]):
        self.alphabet, self.merges = fileformat.validate(alphabet, merges)
        texts = list(self.alphabet)
        for a, b in self.merges:
            texts.append(texts[a] + texts[b])
        self._texts = texts
        self._encoder = MergeEncoder(self.alphabet, self.merges)
        self.provenance: dict | None = None  # what it was trained on (gpt_pipeline.provenance), stored with it

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn gpt-rs's merges on ``texts`` (each its own sequence) up to ``vocab_size`` tokens."""
        return cls.train_from_batches([texts], vocab_size)

    @classmethod
    def train_from_batches(cls, batches: Iterable, vocab_size: int) -> BPETokenizer:
        """``train`` on a corpus that arrives in batches of texts (lists of str, polars or Arrow
        string arrays): only the piece counts are kept, and any split into batches gives the
        same merges as ``train`` on all texts at once.

        Example:
            >>> BPETokenizer.train_from_batches([["the cat"], ["the hat"]], 9).merges
            [(5, 4), (6, 3), (1, 5)]
        """
        counter = PieceCounter()
        for batch in batches:
            counter.add(batch)
        return cls.train_from_counts(counter.counts(), vocab_size)

    @classmethod
    def train_from_counts(cls, piece_counts: Mapping[str, int], vocab_size: int) -> BPETokenizer:
        """``train`` from the piece counts of a corpus (``pieces.PieceCounter.counts()``)."""
        return cls(*learn_merges(piece_counts, vocab_size))

    @property
    def vocab_size(self) -> int:
        return len(self._texts)

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Token ids of ``text``; characters never seen in training raise or are dropped.

        ``unknown="error"`` raises a ``ValueError`` naming each unseen character and its
        positions; ``unknown="skip"`` encodes the text as if those characters were not there.
        """
        _check_mode(unknown)
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}: {text!r}")
        unseen = set(text).difference(self._encoder.char_id)
        if unseen:
            if unknown == "error":
                raise ValueError(_unseen_message(text, unseen))
            text = _strip(text, unseen)
        return self._encoder.encode_text(text)

    def encode_batch(self, texts: Iterable[str], unknown: str = "error") -> list[list[int]]:
        """Token ids of every text (same ids as ``encode`` on each), computed in bulk."""
        ids, offsets = self.encode_flat(texts, unknown)
        flat = ids.tolist()
        return [flat[start:end] for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def encode_flat(self, texts: Iterable[str], unknown: str = "error") -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids back to back and the start offset of each (one more than texts).

        Text i is ``ids[offsets[i]:offsets[i + 1]]``; ids are uint16 for vocabularies up to
        65,536 tokens, else uint32 (``gpt_pipeline.data.tokens.TokenArray`` takes both arrays as is).
        """
        _check_mode(unknown)
        series = as_string_series(texts)
        try:
            ids, offsets = self._encoder.encode_corpus(series)
        except UnseenCharacters as error:
            unseen = set(error.chars)
            if unknown == "error":
                for i, text in enumerate(series.to_list()):
                    if unseen.intersection(text):
                        raise ValueError(f"text {i}: {_unseen_message(text, unseen)}") from None
            stripped = series.str.replace_many({c: "" for c in sorted(unseen)})
            ids, offsets = self._encoder.encode_corpus(stripped)
        dtype = np.uint16 if self.vocab_size <= 65536 else np.uint32
        return ids.astype(dtype), offsets

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (exact inverse of ``encode``)."""
        texts = self._texts
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError("negative id")
            return "".join([texts[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not _is_id(i, len(texts)))
            raise ValueError(f"token id {bad!r} is outside the vocabulary [0, {len(texts)})") from None

    def token_text(self, token_id: int) -> str:
        """The text of one token.

        Example:
            >>> BPETokenizer(["a", "b"], [(0, 1)]).token_text(2)
            'ab'
        """
        if not _is_id(token_id, len(self._texts)):
            raise ValueError(f"token id {token_id!r} is outside the vocabulary [0, {len(self._texts)})")
        return self._texts[int(token_id)]

    # ---- persistence -------------------------------------------------------------------------
    def to_json(self) -> str:
        """Our file format (versioned JSON, see ``fileformat``); byte-identical for equal tokenizers."""
        return fileformat.dumps(self.alphabet, self.merges, self.provenance)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """The tokenizer in ``text`` (``to_json``'s output); unknown formats or versions raise."""
        tokenizer = cls(*fileformat.loads(text))
        tokenizer.provenance = fileformat.provenance_of(text)
        return tokenizer

    def vocab_listing(self) -> str:
        """Every token, one per line: id, text with spaces and newlines visible, its merge."""
        return fileformat.vocab_listing(self.alphabet, self.merges, self._texts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read one file of ours (``to_json``'s text); errors name the file. Files are written, and
        folders read, by ``gpt_pipeline.tokenizer.bundle`` (the listing beside it is not needed)."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            return cls.from_json(text)
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)}: {error}") from None

    def to_hf_json(self) -> str:
        """A Hugging Face ``tokenizer.json`` that encodes every text exactly as ``encode``."""
        from gpt_pipeline.tokenizer.huggingface import hf_tokenizer_json

        return hf_tokenizer_json(self.alphabet, self.merges, self._texts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return (self.alphabet, self.merges) == (other.alphabet, other.merges)

    def __repr__(self) -> str:
        sizes = f"vocab_size={self.vocab_size}, alphabet={len(self.alphabet)}, merges={len(self.merges)}"
        return f"BPETokenizer({sizes})"


def _check_mode(unknown: str) -> None:
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown must be one of {UNKNOWN_MODES}, got {unknown!r}")


def _is_id(value: object, vocab_size: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < vocab_size


def _strip(text: str, chars: set[str]) -> str:
    return text.translate({ord(c): None for c in chars})


def _unseen_message(text: str, unseen: set[str], limit: int = 5) -> str:
    """One line naming each unseen character and where it is.

    Example:
        >>> print(_unseen_message("a€b€é", {"€", "é"}))  # doctest: +ELLIPSIS
        2 characters never seen in training: '€' (U+20AC) at 1, 3; 'é' (U+00E9) at 4 (unknown='skip' ...)
    """
    positions: dict[str, list[int]] = {}
    for i, c in enumerate(text):
        if c in unseen:
            positions.setdefault(c, []).append(i)
    parts = []
    for c in sorted(positions, key=positions.get):
        at = positions[c]
        where = ", ".join(map(str, at[:limit])) + (f" and {len(at) - limit} more" if len(at) > limit else "")
        parts.append(f"{c!r} (U+{ord(c):04X}) at {where}")
    shown = parts[:limit] + ([f"{len(parts) - limit} more"] if len(parts) > limit else [])
    listing = "; ".join(shown)
    return f"{len(positions)} characters never seen in training: {listing} (unknown='skip' drops them)"
