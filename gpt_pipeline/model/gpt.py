"""gpt-rs's causal decoder transformer in PyTorch: the config, the modules, the sampling loop.

Read top to bottom, this module is gpt-rs's model (see docs/gpt-rs-parity.md):

- token embedding + learned position embedding (positions 0..T-1), then embedding dropout;
- ``block_count`` pre-LayerNorm blocks (eps 1e-5), each
  ``x = dropout_res(x) + attn(ln_1(x))`` then ``x = dropout_res(x) + ffn(ln_2(x))``: the residual
  dropout acts on the residual path itself, not on the branch output;
- attention: ``head_count`` heads (one fused q/k/v linear layer here, the same math as gpt-rs's
  per-head layers), scores scaled by 1/sqrt(head size), causal mask, softmax, dropout on the
  attention weights, heads concatenated, projection (with bias);
- feed-forward: linear to ``embedding_size * feed_forward_multiplier``, ReLU, linear back, dropout;
- final LayerNorm, then a bias-free linear head, not tied to the token embedding;
- initialisation: linear weights and embeddings normal(0, 0.02), biases zero, LayerNorms 1 and 0;
- sampling (``GPT.generate``, the one loop): for each new token, the last ``context_length``
  tokens through the model, the logits at the last position divided by the temperature, softmax,
  one multinomial draw; a ``KVCache`` keeps the keys and values while the window fills.

These modules are what runs, in training, evaluation and sampling, on every device. Where a
compiled or fused kernel computes a module's math faster, the module's forward calls it, here:
``Block.forward`` on CPU float32 with gradients (training) runs its halves through ``fused``'s
passes and ``CausalSelfAttention.heads`` through the C kernel ``native_attention``; ``GPT.loss``
on CPU float32 fuses the head with the cross-entropy; ``GPT.generate`` takes its steps from
``native_decode.Session`` (every block in one C call) on CPU float32. The kernels compute this
math for the ReLU feed-forward, from the same random draws in the same order; a model whose
``FeedForward.activation`` is another function runs the plain forwards everywhere.
``gpt_pipeline_tests/reference.py`` (gpt-rs written literally) is the oracle. Dropout masks are
drawn from a ``torch.Generator`` the training loop owns (``set_dropout_generator``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from gpt_pipeline.fields import RESULT, settings
from gpt_pipeline.model import fused, native_attention, native_decode
from gpt_pipeline.model.dropout import Dropout
from gpt_pipeline.model.sampling import sample, validate_sampling

LAYER_NORM_EPS = 1e-5  # tch's LayerNorm default, as in gpt-rs
INIT_STD = 0.02  # std of the normal initialisation of linear weights and embeddings


def _size(default: int, help: str):
    return Field(default, description=help, ge=1, json_schema_extra=RESULT)


def _dropout(help: str):
    return Field(0.05, description=help, ge=0, lt=1, json_schema_extra=RESULT)


@settings
class GPTConfig:
    """gpt-rs's ``transformer_config.ron``; the defaults are its example values (2,118,912 params)."""

    vocab_size: int = _size(2048, "Tokens in the vocabulary (the tokenizer's vocab_size).")
    embedding_size: int = _size(128, "Width of the residual stream.")
    context_length: int = _size(64, "Most tokens the model sees at once (learned positions).")
    head_count: int = _size(4, "Attention heads per block; must divide embedding_size.")
    block_count: int = _size(8, "Transformer blocks.")
    feed_forward_multiplier: int = _size(4, "Hidden width of the feed-forward = embedding_size * this.")
    embedding_dropout: float = _dropout("Dropout after token + position embedding.")
    attention_dropout: float = _dropout("Dropout on the attention weights (after softmax).")
    feed_forward_dropout: float = _dropout("Dropout after the feed-forward's output linear layer.")
    residual_dropout: float = _dropout("Dropout on the residual path, twice per block.")

    def __post_init__(self) -> None:
        if self.embedding_size % self.head_count:
            raise ValueError(
                f"GPTConfig.embedding_size={self.embedding_size} is not divisible by "
                f"head_count={self.head_count}"
            )

    @property
    def head_size(self) -> int:
        return self.embedding_size // self.head_count

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """Build and validate a config; unknown or missing keys raise ``ValueError``.

        Example:
            >>> GPTConfig.from_dict({**GPTConfig().to_dict(), "block_count": 2}).block_count
            2
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted(names - set(values))
        if unknown or missing:
            raise ValueError(f"GPTConfig keys do not match: unknown {unknown}, missing {missing}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"GPTConfig JSON is invalid: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"GPTConfig JSON must be an object, got {type(values).__name__}")
        return cls.from_dict(values)


class KVCache:
    """One block's keys and values ``[B, H, context_length, head_size]`` for positions 0 .. length - 1."""

    def __init__(self, config: GPTConfig, batch: int, like: torch.Tensor):
        shape = (batch, config.head_count, config.context_length, config.head_size)
        self.keys, self.values, self.length = like.new_empty(shape), like.new_empty(shape), 0

    def add(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` ``[B, H, T, hs]``; return every key and value so far ``[B, H, length, hs]``."""
        end = self.length + k.size(2)
        self.keys[:, :, self.length : end], self.values[:, :, self.length : end] = k, v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class CausalSelfAttention(nn.Module):
    """``head_count`` causal self-attention heads side by side, then the projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_count = config.head_count
        self.head_size = config.head_size
        # q, k and v of every head in one layer: rows [q_0 .. q_H-1, k_0 .. k_H-1, v_0 .. v_H-1]
        self.qkv = nn.Linear(config.embedding_size, 3 * config.embedding_size)
        self.projection = nn.Linear(config.embedding_size, config.embedding_size)
        self.attention_dropout = Dropout(config.attention_dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.projection(self.heads(self.qkv(x), cache))  # [B, T, C] -> [B, T, 3C] -> [B, T, C]

    def heads(self, qkv: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The heads' outputs side by side, ``[B, T, C]``, from the q/k/v projection ``[B, T, 3C]``;
        with a ``cache``, the queries are at positions ``cache.length ..`` and see its keys too."""
        B, T, C3 = qkv.shape
        H, dropout = self.head_count, self.attention_dropout
        if cache is None and torch.is_grad_enabled() and native_attention.supports(qkv, H):
            positions = dropout.positions(B * H * T * T)  # CPU training: the C kernel, the same draw
            return native_attention.NativeAttention.apply(qkv, H, positions, dropout.scale)
        q, k, v = (part.view(B, T, H, self.head_size).transpose(1, 2)
                   for part in qkv.split(C3 // 3, dim=2))  # 3 x [B, H, T, hs]
        if cache is not None:
            k, v = cache.add(k, v)  # [B, H, S, hs]: the S = start + T positions so far
        S = k.size(2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # [B, H, T, S]
        future = torch.ones(T, S, dtype=torch.bool, device=qkv.device).triu(S - T + 1)  # key after query
        weights = dropout(scores.masked_fill(future, float("-inf")).softmax(-1))  # [B, H, T, S]
        return (weights @ v).transpose(1, 2).reshape(B, T, C3 // 3)  # [B, H, T, hs] -> [B, T, C]


class FeedForward(nn.Module):
    activation = staticmethod(F.relu)  # the kernels compute ReLU; with another, the plain forward runs

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.embedding_size * config.feed_forward_multiplier
        self.input = nn.Linear(config.embedding_size, hidden)
        self.output = nn.Linear(hidden, config.embedding_size)
        self.dropout = Dropout(config.feed_forward_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output(self.activation(self.input(x))))  # [B, T, C] -> [B, T, 4C] -> [B, T, C]


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(config.embedding_size, eps=LAYER_NORM_EPS)
        self.attention = CausalSelfAttention(config)
        self.layer_norm_2 = nn.LayerNorm(config.embedding_size, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(config)
        self.residual_dropout = Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``[B, T, C]`` -> ``[B, T, C]``; each residual dropout is drawn before its branch runs."""
        relu = self.feed_forward.activation is F.relu  # the fused passes compute ReLU
        if cache is None and fused.cpu_float32(x) and torch.is_grad_enabled() and relu:
            return self.fused_forward(x)
        x = self.residual_dropout(x) + self.attention(self.layer_norm_1(x), cache)  # [B, T, C]
        return self.residual_dropout(x) + self.feed_forward(self.layer_norm_2(x))  # [B, T, C]

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for CPU float32 training: the same math and draws, in ``fused``'s passes
        (residual, bias and dropout written once, oneDNN products; the heads as ``heads`` runs them)."""
        attention, ff, residual = self.attention, self.feed_forward, self.residual_dropout
        drawn = residual.positions(x.numel())  # flat positions of x [B, T, C], or None
        h = self.layer_norm_1(x)
        qkv = fused.LinearFunction.apply(h.flatten(0, 1), attention.qkv.weight, attention.qkv.bias)
        y = attention.heads(qkv.view(*x.shape[:2], -1))  # [B, T, C]
        x = fused.ProjectionResidual.apply(  # x itself, not a view: its gradient is added in place
            y, x, attention.projection.weight, attention.projection.bias, drawn, residual.scale)
        drawn = residual.positions(x.numel())
        h = self.layer_norm_2(x)  # [B, T, C]
        ff_drawn = ff.dropout.positions(h.numel())  # after the residual's, as in the plain order
        return fused.FeedForwardResidual.apply(h, x, ff.input.weight, ff.input.bias, ff.output.weight,
                                               ff.output.bias, ff_drawn, ff.dropout.scale, drawn, residual.scale)


class GPT(nn.Module):
    """gpt-rs's transformer: token ids ``[B, T]`` (T <= context_length) -> logits ``[B, T, V]``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.position_embedding = nn.Embedding(config.context_length, config.embedding_size)
        self.embedding_dropout = Dropout(config.embedding_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.block_count))
        self.layer_norm = nn.LayerNorm(config.embedding_size, eps=LAYER_NORM_EPS)
        self.linear_head = nn.Linear(config.embedding_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Linear weights and embeddings normal(0, 0.02), biases 0, LayerNorms weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, INIT_STD, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        """Draw every dropout mask from ``generator`` (``None``: the global generator)."""
        for module in self.modules():
            if isinstance(module, Dropout):
                module.generator = generator

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        return self.linear_head(self.forward_hidden(idx, cache))  # [B, T, C] -> [B, T, V]

    def forward_hidden(self, idx: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final-LayerNorm output ``[B, T, C]`` for token ids ``idx`` ``[B, T]`` at positions
        ``start ..``: 0, or with a ``cache`` (one ``KVCache`` per block) its length, extended by T."""
        start = cache[0].length if cache else 0
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape [B, T], got {tuple(idx.shape)}")
        if start + idx.size(1) > self.config.context_length:
            raise ValueError(f"sequence of {start + idx.size(1)} tokens is longer than "
                             f"context_length={self.config.context_length}")
        positions = torch.arange(start, start + idx.size(1), device=idx.device)  # [T]
        x = self.embedding_dropout(self.token_embedding(idx) + self.position_embedding(positions))  # [B, T, C]
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            x = block(x, block_cache)  # [B, T, C]
        return self.layer_norm(x)  # [B, T, C]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all positions of ``forward(idx)`` against ``targets`` [B, T]."""
        hidden = self.forward_hidden(idx)  # [B, T, C]
        if fused.cpu_float32(hidden):  # the head fused with the loss: no [B, T, V] logits
            return fused.HeadCrossEntropy.apply(hidden.flatten(0, 1), self.linear_head.weight, targets.flatten())
        logits = self.linear_head(hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.7,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        between_tokens: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """``idx`` ``[B, T]`` followed by ``max_new_tokens`` sampled tokens: ``[B, T + max_new_tokens]``.

        ``sampling.sample`` (gpt-rs's loop; its arguments) with dropout off (the mode is restored
        afterwards), its steps in ``native_decode.Session`` (C) where it applies, else through
        ``forward`` (``cached_step``): the same tokens."""
        validate_sampling(max_new_tokens, temperature, top_k)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"prompt ids must have shape [B, T] with T >= 1, got {tuple(idx.shape)}")
        was_training = self.training
        self.eval()
        try:
            B = idx.size(0)
            step = native_decode.Session(self, B).logits if native_decode.supports(self) else self.cached_step(B)
            return sample(step, idx, max_new_tokens, self.config.context_length, temperature, top_k, generator,
                          between_tokens)
        finally:
            self.train(was_training)

    def cached_step(self, batch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """``step(ids, start)``: the logits ``[B, V]`` at the last of ``ids`` ``[B, T]`` at positions
        ``start ..`` through ``forward``, the keys and values of positions before ``start`` taken from
        the earlier steps' ``KVCache``s."""
        cache = [KVCache(self.config, batch, self.linear_head.weight) for _ in self.blocks]

        def step(ids: torch.Tensor, start: int) -> torch.Tensor:
            for block_cache in cache:
                block_cache.length = start
            return self.linear_head(self.forward_hidden(ids, cache)[:, -1])  # the last position only

        return step

