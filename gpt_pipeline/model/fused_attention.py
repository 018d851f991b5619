"""Hand-written forward and backward of gpt-rs's attention heads for CPU training.

What this module does: ``AttentionHeads`` maps the fused q/k/v projection ``[B, T, 3C]`` to the
heads' outputs side by side, ``[B, T, C]``, with gpt-rs's math: per head, scores
``q @ k.T / sqrt(head_size)``, causal mask, softmax, dropout on the attention weights, weights
``@ v``. The plain composition (``model.CausalSelfAttention`` with ``fused=False``) copies q, k and
v into ``[B * H, T, head_size]`` tensors, makes ``[B * H, T, T]`` weights of which the upper half
is masked, multiplies them by the dropout scale in a separate pass, and transposes the output
back; autograd then copies every gradient back the same way. Here:

- each head's batched products read q, k and v where the projection wrote them (strided views
  of ``[B, T, 3C]``), and its gradients are written straight into ``[B, T, 3C]``;
- the queries are cut into ``query_blocks``: rows ``[r0, r1)`` only see keys ``[0, r1)``, so a
  quarter of the scores (all masked) is never computed, with two blocks;
- the dropout zeroes its positions in place (their values are kept for the softmax's
  backward) and its scale rides in the products' ``alpha``.

Dropout positions are flat indices into each block's weights ``[H, B, r1 - r0, r1]``; a weight
above the causal diagonal is 0 whether dropped or not, so drawing only inside the blocks is the
same dropout. The backward restores the weights in place, so it runs once per forward: a second
backward through the same graph (``retain_graph``) raises PyTorch's in-place error instead of
returning wrong gradients. What it does not do: the q/k/v projection (``fused.LinearFunction``),
decide when to run (``model.py``: CPU float32 training with attention dropout, where the compiled
kernel of ``native_attention`` is not available), inference (``F.scaled_dot_product_attention``
and the key/value cache).
"""

from __future__ import annotations

import math

import torch


def query_blocks(T: int, count: int = 2) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` of the queries, in order; the rows of ``[r0, r1)`` see keys
    ``[0, r1)`` only (causal), so their scores are ``(r1 - r0) x r1`` and the rest is never made.
    Two blocks were the fastest here (one computes every score; three cost more calls than they
    save).

    Example:
        >>> query_blocks(64)
        [(0, 32), (32, 64)]
        >>> query_blocks(1)
        [(0, 1)]
    """
    count = max(1, min(count, T))
    edges = [T * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class AttentionHeads(torch.autograd.Function):
    """``qkv`` ``[B, T, 3C]`` (rows ``[q_0 .. q_H-1, k_0 .., v_0 ..]``) -> heads' outputs ``[B, T, C]``.

    ``positions``: for each of ``query_blocks(T)``, the flat dropped indices of its attention
    weights ``[H, B, r1 - r0, r1]`` (or ``None``); ``scale`` multiplies the kept ones.

    Example:
        >>> qkv = torch.zeros(1, 2, 6)
        >>> qkv[0, :, 4:] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # v of the two heads
        >>> AttentionHeads.apply(qkv, 2, None, 1.0).tolist()  # equal scores: the mean of v so far
        [[[1.0, 2.0], [2.0, 3.0]]]
    """

    @staticmethod
    def forward(ctx, qkv, head_count, positions, scale):
        B, T, C3 = qkv.shape
        C = C3 // 3
        hs = C // head_count
        heads = _heads(qkv, head_count)
        out = torch.empty(B, T, C, dtype=qkv.dtype, device=qkv.device)
        saved, kept = [], []
        for block, (r0, r1) in enumerate(query_blocks(T)):
            causal = torch.full((r1 - r0, r1), float("-inf"), dtype=qkv.dtype, device=qkv.device)
            causal.triu_(r0 + 1)  # row r0 + i sees keys 0 .. r0 + i
            scores = torch.empty(head_count, B, r1 - r0, r1, dtype=qkv.dtype, device=qkv.device)
            for h, (q, k, _) in enumerate(heads):  # each [B, T, hs], strided
                torch.baddbmm(causal, q[:, r0:r1], k[:, :r1].transpose(1, 2), alpha=1.0 / math.sqrt(hs),
                              out=scores[h])
            weights = torch.softmax(scores, -1, out=scores)  # [H, B, r1 - r0, r1], in place
            dropped = positions[block] if positions is not None else None
            if dropped is not None:  # zero in place; the values come back for the backward
                flat = weights.view(-1)
                kept.append(flat.index_select(0, dropped))
                flat.index_fill_(0, dropped, 0.0)
            else:
                kept.append(None)
            y = torch.empty(head_count, B, r1 - r0, hs, dtype=qkv.dtype, device=qkv.device)
            for h, (_, _, v) in enumerate(heads):
                torch.baddbmm(y[h], weights[h], v[:, :r1], beta=0.0, alpha=scale, out=y[h])
            out[:, r0:r1].view(B, r1 - r0, head_count, hs).copy_(y.permute(1, 2, 0, 3))  # heads side by side
            saved.append(weights)
        ctx.save_for_backward(qkv, *saved)
        ctx.head_count, ctx.scale, ctx.positions, ctx.kept = head_count, scale, positions, kept
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, *saved = ctx.saved_tensors
        H, scale, alpha = ctx.head_count, ctx.scale, 1.0 / math.sqrt(qkv.size(2) // 3 // ctx.head_count)
        B, T, C3 = qkv.shape
        C = C3 // 3
        hs = C // H
        heads = _heads(qkv, H)
        grad = grad.contiguous().view(B, T, H, hs)
        grad_qkv = torch.empty_like(qkv)  # [B, T, 3C]
        grad_q, grad_k, grad_v = (grad_qkv[:, :, i * C : (i + 1) * C].view(B, T, H, hs) for i in range(3))
        blocks = list(enumerate(query_blocks(T)))
        for block, (r0, r1) in reversed(blocks):  # the last block sees every key: it writes, the others add
            first = block == len(blocks) - 1
            weights = saved[block]
            grad_weights = torch.empty_like(weights)  # [H, B, r1 - r0, r1]
            for h, (_, _, v) in enumerate(heads):
                g = grad[:, r0:r1, h]  # [B, r1 - r0, hs], strided
                torch.baddbmm(grad_weights[h], g, v[:, :r1].transpose(1, 2), beta=0.0, alpha=scale,
                              out=grad_weights[h])
                _write_or_add(grad_v[:, :r1, h], torch.bmm(weights[h].transpose(1, 2), g), scale, first)
            dropped = ctx.positions[block] if ctx.positions is not None else None
            if dropped is not None:
                grad_weights.view(-1).index_fill_(0, dropped, 0.0)
                weights.view(-1).index_copy_(0, dropped, ctx.kept[block])  # the softmax output again
            grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
            for h, (q, k, _) in enumerate(heads):
                torch.mul(torch.bmm(grad_scores[h], k[:, :r1]), alpha, out=grad_q[:, r0:r1, h])
                _write_or_add(grad_k[:, :r1, h], torch.bmm(grad_scores[h].transpose(1, 2), q[:, r0:r1]),
                              alpha, first)
        return grad_qkv, None, None, None


def _write_or_add(target: torch.Tensor, value: torch.Tensor, scale: float, write: bool) -> None:
    """``target = value * scale`` or ``target += value * scale``, in place (``target`` strided)."""
    if write:
        torch.mul(value, scale, out=target)
    else:
        target.add_(value, alpha=scale)


def _heads(qkv: torch.Tensor, head_count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(q, k, v)`` of each head: ``[B, T, hs]`` strided views into ``qkv`` ``[B, T, 3C]``."""
    C = qkv.size(2) // 3
    hs = C // head_count
    return [tuple(qkv[:, :, part * C + h * hs : part * C + (h + 1) * hs] for part in range(3))
            for h in range(head_count)]
