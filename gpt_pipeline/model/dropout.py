"""Dropout for gpt_pipeline's model: every element dropped independently with probability p.

``nn.Dropout`` draws one random number per element from the single-threaded Mersenne Twister
(a large share of a CPU training step); ``dropped_positions`` draws the gaps between dropped
positions instead (geometric gaps: the same distribution from about p as many random numbers),
applied directly on CPU (``DropPositions``; ``fused`` and the C attention kernel take them too).
Off CPU, ``Dropout`` multiplies by a scaled mask. Kept elements are scaled by 1 / (1 - p), as
``nn.Dropout`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def dropped_positions(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted indices in ``[0, n)``, each present independently with probability ``p`` (CPU).

    The gaps between successive Bernoulli(p) successes are i.i.d. Geometric(p), drawn by
    inversion (``floor(log(1 - u) / log(1 - p)) + 1``, ``u`` uniform in float32, like the
    uniforms ``nn.Dropout`` compares with ``p``): the same distribution as ``n`` independent draws,
    from about ``n * p`` random numbers instead of ``n``.

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
        u = torch.rand(count, generator=generator)  # [count] in [0, 1), multiples of 2**-24
        gaps = u.neg_().log1p_().div_(log_keep).floor_().add_(1)  # [count] >= 1, whole floats, in place
        positions = torch.cumsum(gaps, 0, dtype=torch.long).add_(last)  # [count]
        chunks.append(positions)
        last = int(positions[-1])
    positions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return positions[: int(torch.searchsorted(positions, n))]  # sorted: the ones below n, a view


class Dropout(nn.Module):
    """Inverted dropout with probability ``p``, its mask drawn from ``self.generator`` (``None``:
    the global torch generator, unless the owner sets one); active in training mode with p > 0."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    @property
    def scale(self) -> float:
        """What the kept elements are multiplied by: 1 / (1 - p), 1 when dropout is off."""
        return 1.0 / (1.0 - self.p) if self.training and self.p > 0 else 1.0

    def positions(self, n: int) -> torch.Tensor | None:
        """The flat indices (CPU, int64, sorted) dropped among ``n`` elements, or ``None`` when off."""
        if not self.training or self.p == 0.0:
            return None
        return dropped_positions(n, self.p, self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type == "cpu":
            return DropPositions.apply(x, self.positions(x.numel()), self.scale)
        u = torch.rand(x.shape, generator=self.generator, device=x.device)  # uniform [0, 1)
        return x * u.ge_(self.p).mul_(self.scale).to(x.dtype)  # keep with probability 1 - p

    def extra_repr(self) -> str:
        return f"p={self.p}"


def scaled_except(x: torch.Tensor, positions: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``x * scale`` with the flat ``positions`` set to 0 (``x`` itself when there is nothing to do)."""
    if positions is None:
        return x if scale == 1.0 else x * scale
    out = x * scale
    out.view(-1).index_fill_(0, positions, 0.0)
    return out


class DropPositions(torch.autograd.Function):
    """``x * scale`` with the flat ``positions`` set to 0: dropout without a mask tensor."""

    @staticmethod
    def forward(ctx, x, positions, scale):
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return scaled_except(x, positions, scale)

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        return scaled_except(grad, positions, ctx.scale), None, None
