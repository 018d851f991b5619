"""Learning gpt-rs's BPE merges from counted pieces, with incremental pair counts.

gpt-rs recounts every pair of the whole corpus for each merge. The merges depend only on the
pair counts, so this module counts pairs once over the *distinct* pieces (see ``pieces``),
each weighted by how often it occurs, and after each merge updates only the counts around the
replaced occurrences. Every update merges at least one occurrence, so the total work is bounded
by the number of characters in the distinct pieces, whatever the vocabulary size.

The rules (gpt-rs's, ties included): take the pair with the highest count (overlapping pairs
counted: ``aaa`` holds (a, a) twice); on ties the largest (left id, right id); replace its
occurrences left to right without overlap (``aaa`` -> ``[aa, a]``).

The most frequent pair comes from a heap with lazy entries: an entry is pushed whenever a count
grows, never when it shrinks, so every pair's best entry ranks at least as high as its count;
a popped entry that disagrees with the current count is stale and is re-pushed (lower) or
dropped. This module does not encode text and reads no files.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np


def learn_merges(piece_counts: Mapping[str, int], vocab_size: int) -> tuple[list[str], list[tuple[int, int]]]:
    """The alphabet (ids 0..n-1, code point order) and merges (learning order) for a vocabulary.

    Merge k creates id ``len(alphabet) + k``.

    Example:
        >>> learn_merges({"aaa": 1, " ab": 2}, 5)
        ([' ', 'a', 'b'], [(1, 2), (1, 1)])

        (a, a) twice in "aaa", ( , a) and (a, b) twice in " ab": a three-way tie at 2, won by
        the largest pair (1, 2). Then ( , ab) and (a, a) tie at 2 and (1, 1) > (0, 3) wins.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    alphabet = sorted({c for piece in piece_counts for c in piece})
    if not alphabet:
        raise ValueError("cannot train a tokenizer on an empty corpus (no characters)")
    if len(alphabet) > vocab_size:
        raise ValueError(
            f"the corpus has {len(alphabet)} distinct characters, more than vocab_size {vocab_size}"
        )
    # Only pieces of two characters or more can hold a pair.
    pieces = [piece for piece, freq in piece_counts.items() if len(piece) > 1 and freq > 0]
    freqs = [piece_counts[piece] for piece in pieces]
    M = vocab_size  # a pair (a, b) is the integer a * M + b: same order as the tuple
    words, counts, where = _count_pairs(alphabet, pieces, freqs, M)
    heap = [(-count, -key) for key, count in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    counts_get = counts.get
    for new in range(len(alphabet), vocab_size):
        while heap:
            neg_count, neg_key = heap[0]
            count = counts_get(-neg_key, 0)
            if count == -neg_count:
                break
            heapq.heappop(heap)
            if 0 < count < -neg_count:
                heapq.heappush(heap, (-count, neg_key))
        else:
            raise ValueError(
                f"no pair left to merge after reaching {new} tokens, fewer than vocab_size {vocab_size}"
            )
        heapq.heappop(heap)
        key = -neg_key
        a, b = divmod(key, M)
        merges.append((a, b))
        apply = _apply_merge if a != b else _apply_self_merge
        grown = apply(words, freqs, set(where.pop(key)), a, b, new, M, counts, where)
        del counts[key]
        for k in grown:
            count = counts[k]
            if count > 0:
                heapq.heappush(heap, (-count, -k))
    return alphabet, merges


def _count_pairs(
    alphabet: list[str], pieces: list[str], freqs: list[int], M: int
) -> tuple[list[list[int]], dict[int, int], dict[int, list[int]]]:
    """Pieces as id lists, pair counts weighted by frequency, and the pieces holding each pair.

    Example:
        >>> words, counts, where = _count_pairs(["a", "b"], ["aba", "bb"], [2, 5], 10)
        >>> words, counts, where
        ([[0, 1, 0], [1, 1]], {1: 2, 10: 2, 11: 5}, {1: [0], 10: [0], 11: [1]})
    """
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))  # [pieces]
    code = np.frombuffer("".join(pieces).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ids = np.searchsorted(np.array([ord(c) for c in alphabet], dtype=np.uint32), code)  # [chars]
    flat = ids.tolist()
    ends = np.cumsum(lengths).tolist()
    words = [flat[end - length : end] for end, length in zip(ends, lengths.tolist())]
    piece = np.repeat(np.arange(len(pieces)), lengths)  # [chars]
    inside = piece[1:] == piece[:-1]  # [chars - 1] pair i = (ids[i], ids[i + 1]) in one piece
    keys = (ids[:-1] * M + ids[1:])[inside]  # [pairs]
    holder = piece[:-1][inside]  # [pairs]
    distinct, group = np.unique(keys, return_inverse=True)  # [distinct pairs], [pairs]
    weight = np.asarray(freqs, dtype=np.int64)[holder]
    totals = np.zeros(len(distinct), dtype=np.int64)
    np.add.at(totals, group, weight)
    order = np.argsort(group, kind="stable")
    bounds = np.cumsum(np.bincount(group, minlength=len(distinct)))[:-1]
    holders = np.split(holder[order], bounds)
    keys_list = distinct.tolist()
    counts = dict(zip(keys_list, totals.tolist()))
    where = {key: h.tolist() for key, h in zip(keys_list, holders)}
    return words, counts, where


def _apply_merge(
    words: list[list[int]],
    freqs: list[int],
    holders: set[int],
    a: int,
    b: int,
    new: int,
    M: int,
    counts: dict[int, int],
    where: dict[int, list[int]],
) -> set[int]:
    """Replace (a, b), a != b, by ``new`` in the holder words, updating neighbouring pair counts.

    The count of (a, b) itself is left for the caller to delete (it drops to zero). Returns the
    pairs whose count grew. Works in place. With a != b each replacement uses up exactly one
    ``a``, so a word with c copies of ``a`` needs c look-ups, none of them failing.

    Example:
        >>> words, counts, where = [[0, 1, 0, 1, 2]], {1: 2, 10: 1, 12: 1}, {}
        >>> sorted(_apply_merge(words, [1], {0}, 0, 1, 5, 10, counts, where))
        [50, 52, 55]
        >>> words, counts, where
        ([[5, 5, 2]], {1: 2, 10: 0, 12: 0, 50: 0, 55: 1, 52: 1}, {50: [0], 55: [0], 52: [0]})
    """
    grown: set[int] = set()
    grow = grown.add
    count_of = counts.get
    word_holding = where.get
    for wi in holders:
        word = words[wi]
        freq = freqs[wi]
        i = -1
        for _ in range(word.count(a)):
            i = word.index(a, i + 1)
            last = len(word) - 1
            if i == last or word[i + 1] != b:
                continue
            if i:
                left = word[i - 1]
                counts[left * M + a] -= freq
                k = left * M + new
                counts[k] = count_of(k, 0) + freq
                grow(k)
                holding = word_holding(k)
                if holding is None:
                    where[k] = [wi]
                else:
                    holding.append(wi)
            if i + 1 < last:
                right = word[i + 2]
                counts[b * M + right] -= freq
                k = new * M + right
                counts[k] = count_of(k, 0) + freq
                grow(k)
                holding = word_holding(k)
                if holding is None:
                    where[k] = [wi]
                else:
                    holding.append(wi)
            word[i : i + 2] = (new,)
    return grown


def _apply_self_merge(
    words: list[list[int]],
    freqs: list[int],
    holders: set[int],
    a: int,
    b: int,
    new: int,
    M: int,
    counts: dict[int, int],
    where: dict[int, list[int]],
) -> set[int]:
    """``_apply_merge`` for a pair (a, a), whose replacements may use up two copies of ``a``.

    Example:
        >>> words, counts, where = [[0, 0, 0, 0]], {0: 3}, {}
        >>> sorted(_apply_self_merge(words, [1], {0}, 0, 0, 5, 10, counts, where))
        [50, 55]
        >>> words, counts  # (0, 0) is the caller's to delete; (5, 0) came and went
        ([[5, 5]], {0: 2, 50: 0, 55: 1})
    """
    grown: set[int] = set()
    for wi in holders:
        word = words[wi]
        freq = freqs[wi]
        i = 0
        while True:
            try:
                i = word.index(a, i)
            except ValueError:
                break
            if i + 1 < len(word) and word[i + 1] == b:
                if i > 0:
                    left = word[i - 1]
                    counts[left * M + a] -= freq
                    k = left * M + new
                    counts[k] = counts.get(k, 0) + freq
                    grown.add(k)
                    where.setdefault(k, []).append(wi)
                if i + 2 < len(word):
                    right = word[i + 2]
                    counts[b * M + right] -= freq
                    k = new * M + right
                    counts[k] = counts.get(k, 0) + freq
                    grown.add(k)
                    where.setdefault(k, []).append(wi)
                word[i : i + 2] = (new,)
            i += 1
    return grown
