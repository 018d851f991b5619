"""A tokenized corpus as one flat token array plus story offsets, and gpt-rs's batch sampling.

``TokenArray`` keeps every story's tokens back to back in one NumPy array (uint16 while the
vocabulary fits, uint32 above 65,535 tokens) and the start offset of each story, so that story
``i`` is ``tokens[offsets[i]:offsets[i + 1]]``. Both arrays may be read-only memory maps
(``gpt_pipeline.data.dataset_files``): nothing here copies them whole, and ``sample_batch`` reads only
the windows it draws. Nothing here reads files or knows about Parquet, Dagster or MLflow.

``sample_batch`` draws a training batch the way gpt-rs does: ``contexts_per_batch`` *distinct*
stories, chosen at random among those with at least ``context_length + 1`` tokens, and one random
window of ``context_length + 1`` tokens in each; inputs are the first ``context_length`` tokens of
each window, targets the last ``context_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65,536), else uint32.

    Example:
        >>> token_dtype(2048), token_dtype(70000)
        (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenArray:
    """Stories' tokens back to back (``tokens``) and where each story starts (``offsets``).

    ``offsets`` has one entry more than there are stories: ``offsets[0] == 0`` and
    ``offsets[-1] == len(tokens)``.

    Example:
        >>> ta = TokenArray.from_lists([[1, 2, 3], [4], [5, 6]])
        >>> len(ta), ta.tokens.tolist(), ta.offsets.tolist(), ta.story(2).tolist()
        (3, [1, 2, 3, 4, 5, 6], [0, 3, 4, 6], [5, 6])
    """

    tokens: np.ndarray  # [total_tokens] uint16 or uint32
    offsets: np.ndarray  # [stories + 1] int64

    @classmethod
    def from_lists(cls, stories: Sequence[Sequence[int]], vocab_size: int = 65536) -> TokenArray:
        lengths = np.fromiter((len(s) for s in stories), dtype=np.int64, count=len(stories))
        offsets = np.zeros(len(stories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.empty(int(offsets[-1]), dtype=token_dtype(vocab_size))
        for i, story in enumerate(stories):
            tokens[offsets[i] : offsets[i + 1]] = story
        return cls(tokens=tokens, offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per story, ``[stories]`` int64."""
        return np.diff(self.offsets)

    def story(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    def eligible(self, context_length: int) -> np.ndarray:
        """Indices of the stories with at least ``context_length + 1`` tokens (int32 while they
        fit: 4 bytes a story is all that training keeps per story)."""
        indices = np.flatnonzero(self.lengths >= context_length + 1)
        return indices.astype(np.int32) if len(self.offsets) < 2**31 else indices


def distinct_indices(n: int, k: int, generator: torch.Generator) -> np.ndarray:
    """``k`` distinct indices drawn uniformly from ``[0, n)`` without replacement, in draw order.

    Memory and time grow with ``k``, not ``n`` (a batch of 64 among two million stories draws
    about 64 numbers instead of permuting two million), unless ``k`` is more than half of ``n``,
    where one permutation is cheaper than redrawing repeats.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> picked = distinct_indices(10**9, 64, g)
        >>> len(set(picked.tolist())), int(picked.min()) >= 0, int(picked.max()) < 10**9
        (64, True, True)
    """
    if k > n // 2:
        return torch.randperm(n, generator=generator)[:k].numpy()
    chosen: dict[int, None] = {}  # insertion-ordered set
    while len(chosen) < k:
        for value in torch.randint(n, (2 * (k - len(chosen)),), generator=generator).tolist():
            chosen.setdefault(value)
            if len(chosen) == k:
                break
    return np.fromiter(chosen, dtype=np.int64, count=k)


def sample_batch(
    data: TokenArray,
    contexts_per_batch: int,
    context_length: int,
    generator: torch.Generator,
    eligible: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gpt-rs batch: inputs and targets, both ``[contexts_per_batch, context_length]`` int64.

    Pass ``eligible`` (from :meth:`TokenArray.eligible`) to avoid recomputing it every step.
    Raises ``ValueError`` when fewer stories are eligible than ``contexts_per_batch``.
    """
    if eligible is None:
        eligible = data.eligible(context_length)
    if len(eligible) < contexts_per_batch:
        raise ValueError(
            f"contexts_per_batch={contexts_per_batch} is larger than the {len(eligible)} stories "
            f"with at least context_length + 1 = {context_length + 1} tokens"
        )
    window = context_length + 1
    chosen = eligible[distinct_indices(len(eligible), contexts_per_batch, generator)]  # [B]
    # Only the chosen stories' offsets and windows are read: ``data`` may be memory-mapped.
    spans = data.offsets[chosen + 1] - data.offsets[chosen] - window + 1  # [B] possible starts
    starts = (torch.rand(len(chosen), generator=generator, dtype=torch.float64).numpy() * spans)
    starts = data.offsets[chosen] + np.minimum(starts.astype(np.int64), spans - 1)  # [B]
    index = starts[:, None] + np.arange(window)[None, :]  # [B, T + 1]
    windows = torch.from_numpy(data.tokens[index].astype(np.int64))  # [B, T + 1]
    return windows[:, :-1], windows[:, 1:]
