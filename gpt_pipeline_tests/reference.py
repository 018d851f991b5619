"""gpt-rs written literally: its model, trainer step and sampler, the oracle of every fast path.

Everything here follows gpt-rs's source (docs/gpt-rs-parity.md, ../shared/docs/gpt-rs-semantics.md)
module for module, with gpt-rs's tensor names (``ReferenceGPT.state_dict()`` keys are gpt-rs's
checkpoint names less ``transformer.``): one query, key and value linear layer per head, the
attention weights computed explicitly per head, heads concatenated, projection; dropout on the
residual path itself; the sampler pads the window to ``context_length`` and runs it whole for
every token. Nothing here is fast, nothing in ``gpt_pipeline`` imports it, and it imports nothing
of ``gpt_pipeline.model`` but ``GPTConfig`` and ``GPT``'s parameter names (``from_gpt``).

Dropout: like gpt-rs, each dropout draws its own mask (``F.dropout``), unless
``model.set_masks(Masks(draw))`` was called: then every mask is made from ``draw(n, p)``, a random
draw passed in by the test (the flat indices dropped among ``n`` elements), called once per
dropout in gpt-rs's order (embedding; per block: residual, the attention weights ``[B, H, T, T]``
of all heads at once, residual, feed-forward), so that a model given the same draw can be
compared with this one mask for mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_pipeline.model.gpt import GPT, GPTConfig


@functools.lru_cache(maxsize=64)
def future(T: int, device: str = "cpu") -> torch.Tensor:
    """``[T, T]`` bool, True where the key comes after the query (masked)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None,
           dropout: float = 0.0) -> torch.Tensor:
    """One head: ``q``, ``k``, ``v`` ``[B, T, hs]`` -> ``[B, T, hs]``. The attention weights are
    multiplied by ``keep`` ``[B, T, T]`` (0 or 1/(1-p)) if given, else dropped with ``F.dropout``
    at probability ``dropout``."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # [B, T, T]
    weights = scores.masked_fill(future(q.size(1), str(q.device)), float("-inf")).softmax(-1)
    if keep is not None:
        weights = weights * keep
    elif dropout > 0:
        weights = F.dropout(weights, dropout, True)
    return weights @ v  # [B, T, hs]


def heads_from_qkv(qkv: torch.Tensor, head_count: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """gpt-rs's heads one at a time, from a fused projection ``[B, T, 3C]`` (rows
    ``[q_0 .. q_H-1, k_0 .., v_0 ..]``): ``[B, T, C]``; ``keep`` ``[H, B, T, T]``."""
    C = qkv.size(2) // 3
    hs = C // head_count
    outputs = []
    for h in range(head_count):
        q, k, v = (qkv[:, :, part * C + h * hs : part * C + (h + 1) * hs] for part in range(3))
        outputs.append(attend(q, k, v, None if keep is None else keep[h]))
    return torch.cat(outputs, dim=2)


def kept(n: int, positions: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``[n]``: ``scale`` everywhere but 0 at the flat ``positions`` (dropped)."""
    flat = torch.full((n,), scale)
    if positions is not None:
        flat[positions] = 0.0
    return flat


class Masks:
    """Every dropout mask made from ``draw(n, p)`` (the flat indices dropped among ``n``
    elements), in call order; the attention weights' as ``[B, H, T, T]``, once for all heads."""

    def __init__(self, draw: Callable[[int, float], torch.Tensor]):
        self.draw = draw

    def keep(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        n = math.prod(shape)
        return kept(n, self.draw(n, p), 1 / (1 - p)).view(shape)

    def attention(self, B: int, H: int, T: int, p: float) -> torch.Tensor:
        """``[H, B, T, T]``, drawn once for all heads of a block as ``[B, H, T, T]``."""
        return self.keep((B, H, T, T), p).transpose(0, 1)


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p, self.masks = p, None  # masks: a Masks (set_masks), or None: F.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masks is None or not self.training or self.p == 0:
            return F.dropout(x, self.p, self.training)
        return x * self.masks.keep(tuple(x.shape), self.p)


class Head(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(c.embedding_size, c.head_size) for _ in range(3))
        self.dropout = c.attention_dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0  # gpt-rs: each head draws its own mask
        return attend(self.query(x), self.key(x), self.value(x), keep, dropout)  # [B, T, hs]


class MultiAttentionHead(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.heads = nn.ModuleList(Head(c) for _ in range(c.head_count))
        self.projection = nn.Linear(c.embedding_size, c.embedding_size)
        self.p, self.masks = c.attention_dropout, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = [None] * len(self.heads)
        if self.masks is not None and self.training and self.p > 0:
            B, T, _ = x.shape
            keep = self.masks.attention(B, len(self.heads), T, self.p)  # [H, B, T, T], once for all heads
        return self.projection(torch.cat([head(x, keep[h]) for h, head in enumerate(self.heads)], dim=-1))


class FeedForward(nn.Module):
    activation = staticmethod(F.relu)  # gpt-rs's; tests swap it together with the model's

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.input = nn.Linear(c.embedding_size, c.embedding_size * c.feed_forward_multiplier)
        self.output = nn.Linear(c.embedding_size * c.feed_forward_multiplier, c.embedding_size)
        self.dropout = Dropout(c.feed_forward_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output(self.activation(self.input(x))))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(c.embedding_size, eps=1e-5)
        self.multi_attention_head = MultiAttentionHead(c)
        self.layer_norm_2 = nn.LayerNorm(c.embedding_size, eps=1e-5)
        self.feed_forward = FeedForward(c)
        self.residual_dropout = Dropout(c.residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.residual_dropout(x) + self.multi_attention_head(self.layer_norm_1(x))
        return self.residual_dropout(x) + self.feed_forward(self.layer_norm_2(x))


class ReferenceGPT(nn.Module):
    """gpt-rs's model.rs: token ids ``[B, T]`` -> logits ``[B, T, V]``."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.token_embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        self.position_embedding = nn.Embedding(c.context_length, c.embedding_size)
        self.dropout = Dropout(c.embedding_dropout)
        self.blocks = nn.Sequential(*(Block(c) for _ in range(c.block_count)))
        self.layer_norm = nn.LayerNorm(c.embedding_size, eps=1e-5)
        self.linear_head = nn.Linear(c.embedding_size, c.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding.weight[:T])  # [B, T, C]
        return self.linear_head(self.layer_norm(self.blocks(x)))  # [B, T, V]

    def set_masks(self, masks: Masks | None) -> ReferenceGPT:
        """Draw every dropout mask from ``masks`` (``None``: each its own, as gpt-rs does)."""
        for m in self.modules():
            if isinstance(m, (Dropout, MultiAttentionHead)):
                m.masks = masks
        return self

    @classmethod
    def from_gpt_rs(cls, tensors: dict[str, torch.Tensor], config: GPTConfig) -> ReferenceGPT:
        """The model holding a gpt-rs checkpoint's tensors (every name, ``transformer.`` prefix)."""
        model = cls(config)
        model.load_state_dict({name.removeprefix("transformer."): t for name, t in tensors.items()})
        return model

    @classmethod
    def from_gpt(cls, gpt: GPT) -> ReferenceGPT:
        """The model holding ``gpt``'s weights: its fused q/k/v rows split into the heads' layers."""
        c, ours = gpt.config, gpt.state_dict()
        state = {name: t for name, t in ours.items() if ".attention." not in name}
        C, hs = c.embedding_size, c.head_size
        for i in range(c.block_count):
            for kind in ("weight", "bias"):
                qkv = ours[f"blocks.{i}.attention.qkv.{kind}"]  # [3C, C] or [3C]
                for p, part in enumerate(("query", "key", "value")):
                    for h in range(c.head_count):
                        rows = qkv[p * C + h * hs : p * C + (h + 1) * hs]
                        state[f"blocks.{i}.multi_attention_head.heads.{h}.{part}.{kind}"] = rows
                state[f"blocks.{i}.multi_attention_head.projection.{kind}"] = \
                    ours[f"blocks.{i}.attention.projection.{kind}"]
        model = cls(c)
        model.load_state_dict(state)
        return model.train(gpt.training)

    def gradients_as_gpt(self) -> dict[str, torch.Tensor]:
        """The parameters' gradients under ``GPT``'s names (heads' q/k/v gradients fused back)."""
        grads = {name: p.grad for name, p in self.named_parameters()}
        out = {name: g for name, g in grads.items() if ".multi_attention_head." not in name}
        for i in range(self.config.block_count):
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.attention.qkv.{kind}"] = torch.cat([
                    grads[f"blocks.{i}.multi_attention_head.heads.{h}.{part}.{kind}"]
                    for part in ("query", "key", "value") for h in range(self.config.head_count)])
                out[f"blocks.{i}.attention.projection.{kind}"] = \
                    grads[f"blocks.{i}.multi_attention_head.projection.{kind}"]
        return out


def optimizer(model: nn.Module, learning_rate: float = 2e-4) -> torch.optim.AdamW:
    """gpt-rs's AdamW: betas 0.9/0.999, eps 1e-8, weight decay 0.1 on linear weights only."""
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """gpt-rs's step: cross-entropy over all positions, backward, every gradient element clamped
    to [-0.5, 0.5], AdamW. Returns the loss."""
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # [B * T, V] logits
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_value_(list(model.parameters()), 0.5)
    opt.step()
    return loss


@torch.no_grad()
def generate(model, prompt: list[int], count: int, temperature: float = 0.7,
             generator: torch.Generator | None = None, greedy: bool = False,
             context_length: int | None = None) -> list[int]:
    """gpt-rs's sampling loop: for each new token the last ``context_length`` tokens right-padded
    with 0 to ``context_length``, the whole window through the model (dropout off), the logits at
    the last real position, divided by the temperature, one softmax, one multinomial draw
    (``greedy``: the arg-max). Returns the prompt followed by ``count`` tokens.

    ``model``: a ``ReferenceGPT`` (or any module with a ``config``), or any callable from ids
    ``[1, context_length]`` to logits ``[1, context_length, V]`` with ``context_length`` given."""
    if isinstance(model, nn.Module):
        model.eval()
    context_length = context_length or model.config.context_length
    tokens = list(prompt)
    for _ in range(count):
        window = tokens[-context_length:]
        padded = torch.tensor([window + [0] * (context_length - len(window))])  # [1, ctx]
        logits = model(padded)[0, len(window) - 1]  # [V], the last real position
        if greedy:
            tokens.append(int(logits.argmax()))
            continue
        probabilities = torch.softmax(logits / temperature, dim=-1)  # [V]
        tokens.append(int(torch.multinomial(probabilities, 1, generator=generator)))
    return tokens
