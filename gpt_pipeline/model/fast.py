"""The seam between gpt_pipeline's plain model (``gpt.py``) and its fast paths.

``gpt.py`` asks this module first at three places and runs its own plain forward when the
answer is ``None``:

- ``block_forward(block, x)``: CPU float32 with gradients on (training), the block's halves in
  the passes of ``fused`` (residual, bias and dropout written once, oneDNN products) and its heads
  through the C kernel of ``native_attention`` (compiled on first use), else ``fused_attention``
  (no layout copies, no scores above the causal blocks) when attention dropout is on;
- ``loss(model, hidden, targets)``: CPU float32, the head fused with the cross-entropy
  (``fused.HeadCrossEntropy``: no ``[B, T, V]`` logits);
- ``generate(model, ...)``: sampling with a key/value cache while the window fills and only the
  last position through the last block and the head: every block in one call of the C kernel of
  ``native_decode`` on CPU float32, else ``decode`` (PyTorch operators).

Each computes the plain math from the same random draws, in the same order (the attention
dropout excepted: it is drawn for the weights on and below the diagonal, in the kernel's layout,
a different but equally distributed pattern); ``gpt_pipeline_tests/reference.py`` is the oracle
they are tested against. ``plain()`` turns them all off (tests, comparisons); elsewhere (GPU,
MPS, evaluation without gradients) the plain path runs anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gpt_pipeline.model import decode, native_attention, native_decode
from gpt_pipeline.model.fused import (FeedForwardResidual, HeadCrossEntropy, LinearFunction,
                                      ProjectionResidual)
from gpt_pipeline.model.native_attention import NativeAttention

_enabled = True


def enabled() -> bool:
    """False inside ``plain()``: every call below then returns ``None``."""
    return _enabled


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Run the plain forwards of ``gpt.py`` only, fast paths off, for the duration of the block.

    Example:
        >>> with plain():
        ...     enabled()
        False
    """
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _cpu_float32(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


def block_forward(block, x: torch.Tensor) -> torch.Tensor | None:
    """``gpt.Block.forward`` for CPU float32 training (gradients on), or ``None``.

    The same math and random draws as the plain forward, in the passes of ``fused``.
    """
    if not (_enabled and _cpu_float32(x) and torch.is_grad_enabled()):
        return None
    residual, attention, ff = block.residual_dropout, block.attention, block.feed_forward
    drawn = residual.draw(x)  # flat positions of x [B, T, C], or None
    y = _heads(attention, block.layer_norm_1(x))  # [B, T, C]
    x = ProjectionResidual.apply(  # x itself, not a view: its gradient is added in place
        y, x, attention.projection.weight, attention.projection.bias,
        drawn, residual.scale if drawn is not None else 1.0,
    )  # [B, T, C]
    drawn = residual.draw(x)
    h = block.layer_norm_2(x)  # [B, T, C]
    ff_drawn = ff.dropout.draw(h)  # after the residual's, as in the plain order
    return FeedForwardResidual.apply(
        h, x, ff.input.weight, ff.input.bias, ff.output.weight,
        ff.output.bias, ff_drawn, ff.dropout.scale if ff_drawn is not None else 1.0,
        drawn, residual.scale if drawn is not None else 1.0,
    )  # [B, T, C]


def _heads(attention, x: torch.Tensor) -> torch.Tensor:
    """The heads' outputs side by side ``[B, T, C]`` for ``x`` ``[B, T, C]``: q/k/v with
    ``LinearFunction``, then ``NativeAttention`` (weights dropped among ``[B, H, T, T]``, as the
    plain heads draw them), else the plain heads."""
    B, T, C = x.shape
    H = attention.head_count
    qkv = LinearFunction.apply(x.reshape(B * T, C), attention.qkv.weight, attention.qkv.bias).view(B, T, 3 * C)
    dropout = attention.attention_dropout
    if native_attention.supports(qkv, H):  # the compiled kernel, dropout or not
        positions = dropout.positions(B * H * T * T)  # of [B, H, T, T]
        return NativeAttention.apply(qkv, H, positions, dropout.scale if positions is not None else 1.0)
    return attention.heads(qkv)


def loss(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """``gpt.GPT.loss`` from the final hidden states ``[B, T, C]`` on CPU float32, or ``None``."""
    if not (_enabled and _cpu_float32(hidden)):
        return None
    return HeadCrossEntropy.apply(hidden.flatten(0, 1), model.linear_head.weight, targets.flatten())


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
             generator: torch.Generator | None, between_tokens=None) -> torch.Tensor | None:
    """``gpt.GPT.generate``'s tokens with a key/value cache: through the C kernel of
    ``native_decode`` where it runs (CPU float32), else ``decode.generate``; ``None`` in ``plain()``."""
    if not _enabled:
        return None
    out = native_decode.generate(model, idx, max_new_tokens, temperature, top_k, generator, between_tokens)
    return out if out is not None else decode.generate(model, idx, max_new_tokens, temperature, top_k, generator,
                                                       between_tokens)
