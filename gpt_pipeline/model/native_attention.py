"""gpt-rs's attention heads for CPU training through the C kernel ``native/attention.c``.

``NativeAttention`` is ``CausalSelfAttention.heads``' math (scores ``q @ k.T / sqrt(head_size)``,
causal mask, softmax, dropout on the weights, weights ``@ v``) from the q/k/v projection
``[B, T, 3C]`` to ``[B, T, C]``, forward and backward in one compiled pass per (batch row, head):
no score tensors in memory, no scores above the diagonal, no layout copies. Dropout: sorted flat
indices of the dropped weights in ``[B, H, T, T]``, as the plain heads draw them. The kernel:
``native_build.kernel("attention", head_size)``.
"""

from __future__ import annotations

import math

import torch

from gpt_pipeline.model import native_build


class NativeAttention(torch.autograd.Function):
    """``qkv`` ``[B, T, 3C]`` float32 on CPU -> heads' outputs ``[B, T, C]``.

    ``positions``: sorted flat int64 indices of the dropped weights in ``[B, H, T, T]``
    (or ``None``); ``scale`` multiplies the kept ones (1 / (1 - p))."""

    @staticmethod
    def forward(ctx, qkv, head_count, positions, scale):
        if qkv.dim() != 3 or qkv.size(2) % (3 * head_count) or qkv.device.type != "cpu" \
                or qkv.dtype != torch.float32:
            raise ValueError(f"NativeAttention takes a CPU float32 [B, T, 3 x {head_count} heads x head size] "
                             f"tensor, got {qkv.dtype} {tuple(qkv.shape)} on {qkv.device}")
        B, T, C3 = qkv.shape
        hs = C3 // 3 // head_count
        lib = native_build.kernel("attention", hs)
        if lib is None:
            raise RuntimeError(f"no native attention kernel: {native_build.why_not('attention', hs)}")
        qkv = qkv.contiguous()
        out = torch.empty(B, T, C3 // 3, dtype=qkv.dtype)
        probs = torch.empty(B, head_count, T * (T + 1) // 2, dtype=qkv.dtype)  # softmax, before dropout
        _check(lib.attention_forward(qkv.data_ptr(), out.data_ptr(), probs.data_ptr(), *_positions(positions), B,
                                     T, head_count, 1.0 / math.sqrt(hs), scale, torch.get_num_threads()))
        ctx.save_for_backward(qkv, out, probs, positions)
        ctx.head_count, ctx.scale, ctx.lib = head_count, scale, lib
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, out, probs, positions = ctx.saved_tensors
        B, T, C3 = qkv.shape
        H = ctx.head_count
        grad = grad.contiguous()
        grad_qkv = torch.empty_like(qkv)  # every element written by the kernel
        _check(ctx.lib.attention_backward(
            qkv.data_ptr(), out.data_ptr(), probs.data_ptr(), grad.data_ptr(), grad_qkv.data_ptr(),
            *_positions(positions), B, T, H, 1.0 / math.sqrt(C3 // 3 // H), ctx.scale, torch.get_num_threads()))
        return grad_qkv, None, None, None


def supports(qkv: torch.Tensor, head_count: int) -> bool:
    """Whether ``NativeAttention`` can run on ``qkv`` (CPU float32, a compiled kernel for its head size)."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.float32 and qkv.dim() == 3
            and native_build.kernel("attention", qkv.size(2) // 3 // head_count) is not None)


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("native attention: could not allocate its scratch memory")


def _positions(positions: torch.Tensor | None) -> tuple[int | None, int]:
    if positions is None:
        return None, 0
    if positions.dtype != torch.int64 or positions.dim() != 1 or not positions.is_contiguous():
        raise ValueError(f"dropout positions must be a flat contiguous int64 tensor, got {positions.dtype} "
                         f"{tuple(positions.shape)}")
    return positions.data_ptr(), positions.numel()
