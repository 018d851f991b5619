"""Likelihood of the test split: bits per character overall and by position in the context window,
for the model and for a bigram baseline fitted on the train split (the floor every figure must beat).

The test split is read as windows of ``context_length + 1`` tokens: each story from its start in
steps of ``context_length`` (the last window of a story may be shorter; a story of one token has
none), at most ``max_windows`` of them spread evenly. In a window the token at position p is
predicted from positions 0..p, so position p's figure says how well the model predicts with p + 1
tokens of context. Bits per character of a set of predictions = their total loss in bits / the
characters of the predicted tokens (as ``training.metrics.bits_per_character``, on exactly the
tokens read); the curve is that figure per position.

``Bigram`` is p(b | a) = (c(a, b) + prior * u(b)) / (c(a) + prior): pair counts within the train
split's stories (never across two stories), smoothed towards the add-one unigram u. Its counts
are kept sparse (one entry per pair seen), so its memory is bounded by the pairs, not V².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gpt_pipeline.data.tokens import TokenArray

BIGRAM_PRIOR = 1.0  # pseudo-counts of the unigram in each bigram row
_CHUNK = 1 << 22  # tokens per step when counting: a memory-mapped split is read a few MB at a time
_BATCH = 64  # windows per forward pass


@dataclass(frozen=True)
class Bigram:
    """Sparse bigram counts: the sorted pair codes ``a * V + b`` seen and their ``counts``
    (row ``a`` is ``codes[starts[a]:starts[a + 1]]``), each row's total and the add-one unigram."""

    codes: np.ndarray  # [pairs] int64, sorted
    counts: np.ndarray  # [pairs] float64
    starts: np.ndarray  # [V + 1] int64
    totals: np.ndarray  # [V] float64
    unigram: np.ndarray  # [V] float64, sums to 1
    prior: float = BIGRAM_PRIOR

    @property
    def vocab_size(self) -> int:
        return len(self.unigram)

    @classmethod
    def fit(cls, train: TokenArray, vocab_size: int, prior: float = BIGRAM_PRIOR) -> Bigram:
        """Count the pairs of consecutive tokens within each story of ``train``.

        Example: stories [0, 1, 1] and [1, 0]: pairs (0, 1), (1, 1), (1, 0); none across them.

            >>> b = Bigram.fit(TokenArray.from_lists([[0, 1, 1], [1, 0]]), 2)
            >>> b.codes.tolist(), b.totals.tolist(), b.unigram.tolist()   # unigram: (2 + 1, 3 + 1) / 7
            ([1, 2, 3], [1.0, 2.0], [0.42857142857142855, 0.5714285714285714])
        """
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        unigram = np.ones(vocab_size, np.float64)
        codes, counts = np.zeros(0, np.int64), np.zeros(0, np.float64)
        offsets = np.asarray(train.offsets)
        first = 0
        while first < len(train):  # whole stories, about _CHUNK tokens at a time
            last = int(np.searchsorted(offsets, offsets[first] + _CHUNK, side="right")) - 1
            last = min(max(last, first + 1), len(train))
            begin, end = int(offsets[first]), int(offsets[last])
            tokens = np.asarray(train.tokens[begin:end], dtype=np.int64)
            if tokens.size and tokens.max() >= vocab_size:
                raise ValueError(f"token id {int(tokens.max())} is not below the vocabulary size {vocab_size}")
            unigram += np.bincount(tokens, minlength=vocab_size)
            keep = np.ones(max(0, len(tokens) - 1), bool)
            keep[offsets[first + 1 : last] - begin - 1] = False  # pair (i, i + 1) with i + 1 a story start
            pairs = tokens[:-1][keep] * vocab_size + tokens[1:][keep]
            codes, inverse = np.unique(np.concatenate([codes, pairs]), return_inverse=True)
            counts = np.bincount(inverse, np.concatenate([counts, np.ones(len(pairs))]), minlength=len(codes))
            first = last
        starts = np.searchsorted(codes, np.arange(vocab_size + 1, dtype=np.int64) * vocab_size)
        totals = np.bincount(codes // vocab_size, counts, minlength=vocab_size).astype(np.float64)
        return cls(codes, counts, starts, totals, unigram / unigram.sum(), prior)

    def log_prob(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        """ln p(following | previous), element-wise.

        Example: p(1 | 0) = (1 + 1 * 4/7) / (1 + 1) = 11/14.

            >>> b = Bigram.fit(TokenArray.from_lists([[0, 1, 1], [1, 0]]), 2)
            >>> round(float(np.exp(b.log_prob(np.array([0]), np.array([1]))[0])), 6), round(11 / 14, 6)
            (0.785714, 0.785714)
        """
        previous = np.asarray(previous, np.int64)
        following = np.asarray(following, np.int64)
        codes = previous * self.vocab_size + following
        found = np.zeros(codes.shape)
        if len(self.codes):
            where = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
            found = np.where(self.codes[where] == codes, self.counts[where], 0.0)
        return np.log((found + self.prior * self.unigram[following]) / (self.totals[previous] + self.prior))

    def row(self, previous: int) -> np.ndarray:
        """p(. | previous) over the vocabulary ``[V]`` (sums to 1).

        Example:
            >>> Bigram.fit(TokenArray.from_lists([[0, 1, 1], [1, 0]]), 2).row(0).round(6).tolist()
            [0.214286, 0.785714]
        """
        begin, end = self.starts[previous], self.starts[previous + 1]
        probabilities = self.prior * self.unigram
        probabilities[self.codes[begin:end] % self.vocab_size] += self.counts[begin:end]
        return probabilities / (self.totals[previous] + self.prior)

    def sample(self, prompt: list[int], count: int, temperature: float, rng: np.random.Generator,
               top_k: int | None = None) -> list[int]:
        """``count`` tokens after ``prompt``, each drawn from its row raised to 1 / ``temperature``
        (among the ``top_k`` likeliest when given), as the model samples."""
        out, previous = [], prompt[-1]
        for _ in range(count):
            weights = self.row(previous) ** (1.0 / temperature)
            if top_k is not None and top_k < len(weights):
                weights[weights < np.partition(weights, -top_k)[-top_k]] = 0.0
            previous = int(rng.choice(self.vocab_size, p=weights / weights.sum()))
            out.append(previous)
        return out


@dataclass(frozen=True)
class Likelihood:
    """Bits per character over every predicted token, and by position in the window."""

    bits_per_character: float
    curve: list[float]  # [context_length] bits per character at each position (nan: none there)
    tokens: int  # predictions read


def windows(test: TokenArray, context_length: int, max_windows: int) -> list[tuple[int, int]]:
    """``(start, end)`` token spans of the windows (see the module docstring), at most
    ``max_windows``, spread evenly when there are more.

    Example: a story of 7 tokens with context 3: [0, 4), [3, 7); one of 2: [7, 9).

        >>> windows(TokenArray.from_lists([[1] * 7, [2, 2]]), 3, 10)
        [(0, 4), (3, 7), (7, 9)]
    """
    spans = []
    offsets = np.asarray(test.offsets)
    for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        spans += [(s, min(s + context_length + 1, end)) for s in range(begin, end - 1, context_length)]
    if len(spans) > max_windows:
        picked = np.linspace(0, len(spans) - 1, max_windows).round().astype(int)
        spans = [spans[i] for i in picked]
    return spans


def _summary(nats: np.ndarray, characters: np.ndarray, count: np.ndarray) -> Likelihood:
    """From per-position sums of nats and characters: overall and per-position bits per character."""
    curve = [float(n / math.log(2) / c) if c else float("nan") for n, c in zip(nats, characters)]
    total_chars = characters.sum()
    overall = float(nats.sum() / math.log(2) / total_chars) if total_chars else float("nan")
    return Likelihood(overall, curve, int(count.sum()))


@torch.no_grad()
def likelihoods(model, bigram: Bigram, test: TokenArray, token_lengths: np.ndarray, max_windows: int
                ) -> tuple[Likelihood, Likelihood]:
    """The model's and the bigram's ``Likelihood`` on the same windows of ``test``
    (``token_lengths[i]``: characters of token i)."""
    context = model.config.context_length
    spans = windows(test, context, max_windows)
    device = model.linear_head.weight.device
    sums = {name: np.zeros(context) for name in ("model", "bigram", "characters", "count")}
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(spans), _BATCH):
            batch = spans[first : first + _BATCH]
            ids = np.zeros((len(batch), context + 1), np.int64)
            mask = np.zeros((len(batch), context), bool)
            for row, (begin, end) in enumerate(batch):
                ids[row, : end - begin] = test.tokens[begin:end]
                mask[row, : end - begin - 1] = True
            inputs, targets = ids[:, :-1], ids[:, 1:]
            logits = model(torch.from_numpy(inputs).to(device)).float()  # [B, T, V]
            nats = -torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(targets).to(device)[..., None])
            nats = nats[..., 0].cpu().numpy()  # [B, T]
            sums["model"] += np.where(mask, nats, 0).sum(0)
            sums["bigram"] += np.where(mask, -bigram.log_prob(inputs, targets), 0).sum(0)
            sums["characters"] += np.where(mask, token_lengths[targets], 0).sum(0)
            sums["count"] += mask.sum(0)
    finally:
        model.train(was_training)
    return (_summary(sums["model"], sums["characters"], sums["count"]),
            _summary(sums["bigram"], sums["characters"], sums["count"]))
