"""Dropout for gpt_pipeline's model: every element dropped independently with probability p.

``nn.Dropout`` draws one random number per element from the single-threaded Mersenne Twister,
which cost about a seventh of a training step on a 2-core CPU. ``dropped_positions`` draws the
gaps between dropped positions instead (geometric gaps: the same distribution from about p as
many random numbers), and ``Dropout`` builds its scaled mask from them. Same semantics as
``nn.Dropout``: kept elements are scaled by 1 / (1 - p). Nothing else lives here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def dropped_positions(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted indices in ``[0, n)``, each present independently with probability ``p`` (CPU).

    The gaps between successive Bernoulli(p) successes are i.i.d. Geometric(p), drawn by
    inversion (``floor(log(1 - u) / log(1 - p)) + 1``, ``u`` uniform in float64): the same
    distribution as ``n`` independent draws, from about ``n * p`` random numbers instead of ``n``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> positions = dropped_positions(1_000_000, 0.05, g)
        >>> round(len(positions) / 1_000_000, 2), bool((positions.diff() > 0).all())
        (0.05, True)
    """
    if p == 0.0:
        return torch.empty(0, dtype=torch.long)
    log_keep = math.log1p(-p)
    chunks, last = [], -1
    while last < n:  # once, but for a ~6-sigma shortfall of gaps
        expected = (n - last) * p
        count = int(expected + 6.0 * math.sqrt(expected) + 16)
        u = torch.rand(count, generator=generator, dtype=torch.float64)  # [count] in [0, 1)
        gaps = torch.floor(torch.log1p(-u).div_(log_keep)).add_(1).long()  # [count] >= 1
        positions = torch.cumsum(gaps, 0).add_(last)  # [count]
        chunks.append(positions)
        last = int(positions[-1])
    positions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return positions[positions < n]


class Dropout(nn.Module):
    """Inverted dropout with probability ``p``, its mask drawn from ``self.generator``.

    ``generator`` is ``None`` (the global torch generator) unless the owner sets one. ``mask``
    exposes the scaled mask so that callers can fuse it into their next operation. On CPU the
    dropped positions come from ``dropped_positions`` (a few random numbers instead of one per
    element: the Mersenne Twister is single-threaded and was a seventh of a training step);
    elsewhere from ``torch.rand(...) >= p``. Either way every element is dropped independently
    with probability ``p``, as ``nn.Dropout`` does.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """0 or 1/(1-p) for every element of ``x``, or ``None`` when dropout is off."""
        if not self.training or self.p == 0.0:
            return None
        scale = 1.0 / (1.0 - self.p)
        if x.device.type == "cpu":
            mask = torch.full(x.shape, scale, dtype=x.dtype)
            mask.view(-1).index_fill_(0, dropped_positions(x.numel(), self.p, self.generator), 0.0)
            return mask
        u = torch.rand(x.shape, generator=self.generator, device=x.device)  # uniform [0, 1)
        return u.ge_(self.p).mul_(scale).to(x.dtype)  # keep with probability 1 - p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask(x)
        return x if mask is None else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
