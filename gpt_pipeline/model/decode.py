"""Sampling from a ``GPT`` with a key/value cache: gpt-rs's tokens, fewer FLOPs (a fast path).

gpt-rs's loop (``GPT.generate``'s plain loop), for every new token: the last ``context_length``
tokens through the model at positions 0.., the logits at the last position, ``sample_next``.
``generate`` here picks the same tokens from the same random draws:

- while the sequence still fits in the context window, the window starts at position 0 and only
  grows, so the keys and values of earlier positions never change: a ``KVCache`` keeps them and
  each new token costs one position through the model;
- once the window slides, every position shifts and the whole window is recomputed (gpt-rs's
  learned absolute positions leave no shortcut);
- in the last block and the head, only the last position is computed (the others' keys and
  values excepted);
- a batch of prompts (of equal length) is sampled at once.

Inference only: the model must be in eval mode (no dropout). ``gpt.py`` enters here through
``fast.generate`` when the C kernel of ``native_decode`` (the same loop, every block in one call)
cannot run: off CPU, not float32, no compiler, or ``GPT_PIPELINE_NATIVE=0``.
``gpt_pipeline_tests/reference.py``'s sampler is the oracle both are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_pipeline.model import fused, native_attention
from gpt_pipeline.model.generation import sample_next
from gpt_pipeline.model.native_attention import NativeAttention


class KVCache:
    """Keys and values of every block for the positions seen so far, ``[B, H, T, head_size]`` each."""

    def __init__(self, model, batch: int):
        config, parameter = model.config, model.linear_head.weight
        shape = (batch, config.head_count, config.context_length, config.head_size)
        self.keys = [parameter.new_empty(shape) for _ in range(config.block_count)]
        self.values = [parameter.new_empty(shape) for _ in range(config.block_count)]
        self.length = 0  # positions filled, the same in every block


def hidden(model, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
    """Final-LayerNorm output ``[B, T, C]`` for ``idx`` ``[B, T]`` at positions from ``cache.length``
    (0 without a cache), as ``GPT.forward_hidden`` computes it in eval mode; the cache, if any, is
    extended by T positions. With ``last_only`` the last block computes queries, feed-forward and
    output for the last position alone: ``[B, 1, C]``."""
    if model.training:
        raise ValueError("decode.hidden runs the model in eval mode only (dropout off)")
    if idx.dim() != 2:
        raise ValueError(f"GPT expects token ids of shape [B, T], got {tuple(idx.shape)}")
    T = idx.size(1)
    start = cache.length if cache is not None else 0
    context_length = model.config.context_length
    if start + T > context_length:
        raise ValueError(f"sequence of {start + T} tokens is longer than context_length={context_length}")
    positions = torch.arange(start, start + T, device=idx.device)  # [T]
    x = model.token_embedding(idx) + model.position_embedding(positions)  # [B, T, C]
    last = len(model.blocks) - 1
    for layer, block in enumerate(model.blocks):
        x = _block(block, x, cache, layer, last_only and layer == last)
    if cache is not None:
        cache.length += T
    return model.layer_norm(x)


def _block(block, x: torch.Tensor, cache: KVCache | None, layer: int, last_only: bool) -> torch.Tensor:
    """``Block.forward`` without dropout, keys and values taken from and added to ``cache``:
    ``[B, T, C]`` -> ``[B, T, C]``, or ``[B, 1, C]`` for the last position when ``last_only``.

    The products of many rows go through ``fused.linear`` / ``linear_add`` (oneDNN on CPU: bias,
    ReLU and residual in the product's pass), a whole causal window through the C kernel of
    ``native_attention`` where it is built; else ``F.linear`` and
    ``F.scaled_dot_product_attention``."""
    attention = block.attention
    B, T, C = x.shape
    H, hs = attention.head_count, attention.head_size
    h = block.layer_norm_1(x)  # [B, T, C]
    weight, bias = attention.qkv.weight, attention.qkv.bias
    if last_only and T > 1:
        qkv = None
        q = linear(h[:, -1:], weight[:C], bias[:C])  # [B, 1, C]
        k, v = linear(h, weight[C:], bias[C:]).split(C, dim=2)  # 2 x [B, T, C]
    else:
        qkv = linear(h, weight, bias)  # [B, T, 3C]
        q, k, v = qkv.split(C, dim=2)  # 3 x [B, T, C]
    Tq = q.size(1)
    start = cache.length if cache is not None else 0
    if cache is not None:
        if start > 0 and T > 1:
            raise ValueError(f"a filled KVCache takes one new position at a time, got {T}")
        cache.keys[layer][:, :, start : start + T] = k.view(B, T, H, hs).transpose(1, 2)
        cache.values[layer][:, :, start : start + T] = v.view(B, T, H, hs).transpose(1, 2)
    if qkv is not None and T > 1 and native_attention.supports(qkv, H):  # a whole causal window
        y = NativeAttention.apply(qkv, H, None, 1.0)  # [B, T, C], heads side by side
    else:
        q = q.view(B, Tq, H, hs).transpose(1, 2)  # [B, H, Tq, hs]
        if cache is not None:
            k = cache.keys[layer][:, :, : start + T]  # [B, H, start + T, hs]
            v = cache.values[layer][:, :, : start + T]  # [B, H, start + T, hs]
        else:
            k = k.view(B, T, H, hs).transpose(1, 2)  # [B, H, T, hs]
            v = v.view(B, T, H, hs).transpose(1, 2)  # [B, H, T, hs]
        # a single query is the last position: it sees every key
        y = F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1)  # [B, H, Tq, hs]
        y = y.transpose(1, 2).reshape(B, Tq, C)  # [B, Tq, C]
    projection, ff = attention.projection, block.feed_forward
    x = linear_add(y, projection.weight, projection.bias, x[:, -Tq:])  # x + projection(y)
    hidden = linear(block.layer_norm_2(x), ff.input.weight, ff.input.bias, relu=True)  # [B, Tq, 4C]
    return linear_add(hidden, ff.output.weight, ff.output.bias, x)  # x + ffn: [B, Tq, C]


ONEDNN_ROWS = 32  # from this many rows oneDNN's linear is faster than F.linear here (1 row: 3x slower)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``x @ w.T + b`` (then ReLU) for ``x`` ``[B, T, in]``: ``[B, T, out]``."""
    if x.size(0) * x.size(1) >= ONEDNN_ROWS:
        return fused.linear(x, w, b, relu)
    out = F.linear(x, w, b)
    return out.relu_() if relu else out


def linear_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``other + x @ w.T + b`` for ``x`` ``[B, T, in]``, ``other`` ``[B, T, out]``: a new tensor."""
    if x.size(0) * x.size(1) >= ONEDNN_ROWS:
        return fused.linear_add(x, w, b, other.contiguous())
    return F.linear(x, w, b).add_(other)


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.7,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    between_tokens=None,
) -> torch.Tensor:
    """``idx`` ``[B, T]`` followed by ``max_new_tokens`` tokens sampled as ``GPT.generate`` does:
    ``[B, T + max_new_tokens]`` (the model in eval mode; ``GPT.generate`` checks the arguments;
    ``between_tokens`` as there)."""
    context_length = model.config.context_length
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    cache = None
    for n in range(T, T + max_new_tokens):  # n tokens known, pick token n
        if between_tokens is not None:
            between_tokens()
        if n <= context_length:  # the window starts at position 0 and only grows
            if cache is None:
                cache = KVCache(model, B)
                h = hidden(model, out[:, :n], cache, last_only=True)  # [B, 1, C]
            else:
                h = hidden(model, out[:, n - 1 : n], cache, last_only=True)  # [B, 1, C]
        else:  # the window slides: every position moves, recompute it whole
            h = hidden(model, out[:, n - context_length : n], last_only=True)  # [B, 1, C]
        logits = model.linear_head(h[:, -1])  # [B, V]: the last position only
        out[:, n] = sample_next(logits, temperature, top_k, generator)
    return out
