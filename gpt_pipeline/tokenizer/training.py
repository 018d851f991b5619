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
    char_id = {c: i for i, c in enumerate(alphabet)}
    # Only pieces of two characters or more can hold a pair.
    words: list[list[int]] = []
    freqs: list[int] = []
    for piece, freq in piece_counts.items():
        if len(piece) > 1 and freq > 0:
            words.append(list(map(char_id.__getitem__, piece)))
            freqs.append(freq)

    # A pair (a, b) is the integer a * M + b: same order as the tuple, cheaper to hash.
    M = vocab_size
    counts: dict[int, int] = {}
    where: dict[int, list[int]] = {}  # pair -> words that hold (or once held) it
    for wi, word in enumerate(words):
        freq = freqs[wi]
        for a, b in zip(word, word[1:]):
            key = a * M + b
            counts[key] = counts.get(key, 0) + freq
            where.setdefault(key, []).append(wi)
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
        grown = _apply_merge(words, freqs, set(where.pop(key)), a, b, new, M, counts, where)
        del counts[key]
        for k in grown:
            count = counts[k]
            if count > 0:
                heapq.heappush(heap, (-count, -k))
    return alphabet, merges


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
    """Replace (a, b) by ``new`` in the holder words, updating the neighbouring pair counts.

    The count of (a, b) itself is left for the caller to delete (it drops to zero). Returns the
    pairs whose count grew. Works in place.

    Example:
        >>> words, counts, where = [[0, 0, 0, 0]], {0: 3}, {}
        >>> sorted(_apply_merge(words, [1], {0}, 0, 0, 5, 10, counts, where))
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
