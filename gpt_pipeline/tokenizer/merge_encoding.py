"""Applying learnt merges to text: one piece at a time (cached) or a whole corpus at once.

gpt-rs encodes by applying each merge, in learning order, left to right over the whole text.
A merge never crosses a piece boundary (see ``pieces``), and after merge k no pair of rank <= k
is left (every new adjacency involves the new token, whose merges were learnt later). So the
same ids come from the usual BPE loop run on each piece separately: merge every occurrence of
the lowest-ranked pair present, left to right without overlap, until no learnt pair is left.

``MergeEncoder.encode_piece`` runs that loop in Python behind a cache of encoded pieces.
``MergeEncoder.encode_corpus`` handles many texts: polars cuts every text before its spaces and
finds the distinct chunks (Rust, all cores; no learnt merge involves a barrier, so a chunk needs
no further cut), NumPy runs the loop on all distinct chunks at once (one vectorized round per
merge step, finished chunks dropped as they complete), and every chunk occurrence is then
filled in with one gather. Characters outside the alphabet are reported
(``UnseenCharacters``), not handled: that policy is the tokenizer's. This module does not learn
merges or read files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from gpt_pipeline.tokenizer.pieces import chunk_table, split_pieces

_NO_MERGE = np.iinfo(np.int32).max
_DENSE_TABLE_MAX = 1 << 23  # pair-rank lookup as a dense [V * V] table up to 8M entries (32 MB)


class MergeEncoder:
    """Merge ranks of a tokenizer, with a per-piece cache and a bulk corpus encoder.

    Example:
        >>> enc = MergeEncoder([" ", "a", "b"], [(1, 2), (3, 1)])  # ab = 3, aba = 4
        >>> enc.encode_piece("ababa"), enc.encode_text("ab aba")
        ([3, 4], [3, 0, 4])

        ("ababa" -> [ab, ab, a] -> [ab, aba]. Space is a character like any other here; the
        pieces keep it at the start of " aba".)
    """

    def __init__(self, alphabet: Sequence[str], merges: Sequence[tuple[int, int]]):
        self.alphabet_size = len(alphabet)
        self.vocab_size = len(alphabet) + len(merges)
        self.char_id = {c: i for i, c in enumerate(alphabet)}
        V = self.vocab_size
        self.rank = {a * V + b: k for k, (a, b) in enumerate(merges)}
        self.merges = list(merges)
        self.cache: dict[str, list[int]] = {}
        self.codepoints = np.array([ord(c) for c in alphabet], dtype=np.int64)  # ascending
        self._table: np.ndarray | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    # ---- one piece at a time -------------------------------------------------------------
    def encode_piece(self, piece: str) -> list[int]:
        """The ids of one piece whose characters are all in the alphabet (cached)."""
        cached = self.cache.get(piece)
        if cached is not None:
            return cached
        ids = [self.char_id[c] for c in piece]
        V, rank_get, n = self.vocab_size, self.rank.get, self.alphabet_size
        while len(ids) > 1:
            best = min(rank_get(a * V + b, _NO_MERGE) for a, b in zip(ids, ids[1:]))
            if best == _NO_MERGE:
                break
            a, b = self.merges[best]
            new = n + best
            out, i, last = [], 0, len(ids) - 1
            while i <= last:
                if i < last and ids[i] == a and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        self.cache[piece] = ids
        return ids

    def encode_text(self, text: str) -> list[int]:
        """The ids of ``text`` (all characters in the alphabet), piece by piece."""
        encode_piece = self.encode_piece
        return [t for piece in split_pieces(text) for t in encode_piece(piece)]

    # ---- whole corpus at once --------------------------------------------------------------
    def encode_corpus(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids back to back (int64) and each text's start offset (len(texts) + 1).

        Raises ``UnseenCharacters`` (a ``ValueError``) listing the characters outside the
        alphabet, if any, before encoding anything.

        Example:
            >>> enc = MergeEncoder([" ", "a", "b"], [(1, 2), (0, 3)])  # ab = 3, " ab" = 4
            >>> ids, offsets = enc.encode_corpus(pl.Series(["ab ab", "", "ba"]))
            >>> ids.tolist(), offsets.tolist()
            ([3, 4, 2, 1], [0, 2, 2, 4])
        """
        chunks, occurrence, per_text = chunk_table(texts)
        tokens, token_offsets = self.encode_distinct(chunks)
        # Every chunk occurrence gets its distinct chunk's tokens: one gather.
        lengths = np.diff(token_offsets)[occurrence]  # [occurrences]
        ends = np.cumsum(lengths)  # [occurrences]
        within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)
        ids = tokens[np.repeat(token_offsets[occurrence], lengths) + within]  # [tokens]
        text_offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        text_offsets[1:] = np.concatenate(([0], ends))[np.cumsum(per_text)]
        return ids, text_offsets

    def encode_distinct(self, pieces: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of each piece back to back and each piece's start offset (len(pieces) + 1).

        A "piece" here may be any text whose merges cannot cross into its neighbours': a
        gpt-rs piece, or a chunk (a space and a word with its quotes and newlines).

        Runs the lowest-rank-first loop on every piece at once: each round finds, per piece,
        the lowest-ranked learnt pair and merges its occurrences left to right without overlap
        (a run ``a a a`` of one pair (a, a) takes its 1st and 3rd positions: ``aa a``).

        Example:
            >>> enc = MergeEncoder(["a", "b"], [(0, 0), (0, 1)])  # aa = 2, ab = 3
            >>> tokens, offsets = enc.encode_distinct(["aaab", "b", "aaa"])
            >>> tokens.tolist(), offsets.tolist()
            ([2, 3, 1, 2, 0], [0, 2, 3, 5])
        """
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        text = "".join(pieces)
        code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.minimum(np.searchsorted(self.codepoints, code), len(self.codepoints) - 1)  # [chars]
        unseen = self.codepoints[ids] != code
        if unseen.any():
            raise UnseenCharacters(sorted({chr(c) for c in code[unseen].tolist()}))
        piece = np.repeat(np.arange(len(lengths)), lengths)  # [chars] piece index
        done_ids, done_piece = [], []
        V, n = self.vocab_size, self.alphabet_size
        table = self._rank_table()
        while len(ids):
            # rank[i]: rank of the pair (ids[i], ids[i+1]) if learnt and inside one piece
            same = piece[1:] == piece[:-1]
            rank = np.full(len(ids), _NO_MERGE, dtype=np.int64)
            rank[:-1] = np.where(same, self._ranks_of(table, ids[:-1] * V + ids[1:]), _NO_MERGE)
            starts = np.flatnonzero(np.concatenate(([True], ~same)))  # [pieces in play]
            best = np.minimum.reduceat(rank, starts)  # [pieces in play]
            finished = best == _NO_MERGE
            if finished.any():
                length = np.diff(np.append(starts, len(ids)))
                out = np.repeat(finished, length)
                done_ids.append(ids[out])
                done_piece.append(piece[out])
                keep = ~out
                ids, piece, rank = ids[keep], piece[keep], rank[keep]
                best, length = best[~finished], length[~finished]
                if not len(ids):
                    break
                best_at = np.repeat(best, length)
            else:
                best_at = np.repeat(best, np.diff(np.append(starts, len(ids))))
            hit = np.flatnonzero(rank == best_at)  # occurrences of each piece's best pair
            # Within a run of consecutive hits (only a pair (a, a) makes one) take every other.
            run_break = np.concatenate(([True], hit[1:] != hit[:-1] + 1))
            run_start = np.maximum.accumulate(np.where(run_break, np.arange(len(hit)), 0))
            take = hit[(np.arange(len(hit)) - run_start) % 2 == 0]
            ids[take] = n + rank[take]
            keep = np.ones(len(ids), dtype=bool)
            keep[take + 1] = False
            ids, piece = ids[keep], piece[keep]
        if not done_ids:
            return np.zeros(0, dtype=np.int64), np.zeros(len(lengths) + 1, dtype=np.int64)
        all_piece = np.concatenate(done_piece)
        order = np.argsort(all_piece, kind="stable")
        tokens = np.concatenate(done_ids)[order]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(all_piece, minlength=len(lengths)))
        return tokens, offsets

    def _rank_table(self) -> np.ndarray | None:
        """Dense pair -> rank table (vocabularies up to ~2,896 tokens), else None."""
        V = self.vocab_size
        if self._table is None and V * V <= _DENSE_TABLE_MAX:
            table = np.full(V * V, _NO_MERGE, dtype=np.int32)
            if self.rank:
                keys = np.fromiter(self.rank.keys(), dtype=np.int64)
                table[keys] = np.fromiter(self.rank.values(), dtype=np.int32)
            self._table = table
        return self._table

    def _ranks_of(self, table: np.ndarray | None, keys: np.ndarray) -> np.ndarray:
        """Rank of each pair key (a * V + b), ``_NO_MERGE`` for pairs never learnt."""
        if table is not None:
            return table[keys]
        if not self.rank:
            return np.full(len(keys), _NO_MERGE, dtype=np.int64)
        if self._sorted is None:
            sorted_keys = np.array(sorted(self.rank), dtype=np.int64)
            ranks = np.array([self.rank[k] for k in sorted_keys.tolist()], dtype=np.int64)
            self._sorted = (sorted_keys, ranks)
        sorted_keys, sorted_ranks = self._sorted
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == keys, sorted_ranks[at], _NO_MERGE)


class UnseenCharacters(ValueError):
    """Text holds characters that were not in the training corpus (``chars``, sorted)."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        super().__init__(f"characters not in the tokenizer's alphabet: {''.join(chars)!r}")
