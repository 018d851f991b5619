"""Dropout for gpt_pipeline's model: every element dropped independently with probability p.

``nn.Dropout`` draws one random number per element from the single-threaded Mersenne Twister,
which cost about a seventh of a training step on a 2-core CPU. ``dropped_positions`` draws the
gaps between dropped positions instead (geometric gaps: the same distribution from about p as
many random numbers). On CPU the dropped positions are applied directly, with no mask tensor:
``DropPositions`` scales and zeroes in one pass, forward and backward (``fused.py`` does the
same inside its fused products). Elsewhere ``Dropout`` builds a scaled
mask. Same semantics as ``nn.Dropout`` either way: kept elements are scaled by 1 / (1 - p).
Nothing else lives here.
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

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.p)

    def draw(self, x: torch.Tensor) -> torch.Tensor | None:
        """What to drop in a tensor shaped like ``x``: on CPU the flat indices of the dropped
        elements (int64, from the same random numbers ``mask`` would use), elsewhere ``mask(x)``;
        ``None`` when dropout is off."""
        if x.device.type == "cpu":
            return self.positions(x.numel())
        return self.mask(x)

    def positions(self, n: int) -> torch.Tensor | None:
        """The flat indices (CPU, int64, sorted) dropped among ``n`` elements, or ``None`` when
        dropout is off."""
        if not self.training or self.p == 0.0:
            return None
        return dropped_positions(n, self.p, self.generator)

    def apply(self, x: torch.Tensor, drawn: torch.Tensor | None) -> torch.Tensor:
        """``x`` with the elements ``drawn`` dropped and the rest scaled by 1 / (1 - p)."""
        if drawn is None:
            return x
        if drawn.dtype == torch.long:
            return DropPositions.apply(x, drawn, self.scale)
        return x * drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def scaled_except(x: torch.Tensor, positions: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``x * scale`` with the flat ``positions`` set to 0 (``x`` itself when there is nothing to do).

    Example:
        >>> scaled_except(torch.ones(2, 2), torch.tensor([1]), 2.0).tolist()
        [[2.0, 0.0], [2.0, 2.0]]
    """
    if positions is None:
        return x if scale == 1.0 else x * scale
    out = x * scale
    out.view(-1).index_fill_(0, positions, 0.0)
    return out


class DropPositions(torch.autograd.Function):
    """``x * scale`` with the flat ``positions`` set to 0: dropout without a mask tensor.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> y = DropPositions.apply(x, torch.tensor([1, 5]), 2.0)
        >>> y.tolist()
        [[2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]
        >>> y.sum().backward(); x.grad.tolist()
        [[2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]
    """

    @staticmethod
    def forward(ctx, x, positions, scale):
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return scaled_except(x, positions, scale)

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        return scaled_except(grad, positions, ctx.scale), None, None
