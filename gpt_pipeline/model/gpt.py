"""gpt-rs's causal decoder transformer in PyTorch: the config, the modules and their exact math.

What this module does: define ``GPTConfig`` (gpt-rs's ``transformer_config.ron``, same field
names) and ``GPT``, an ``nn.Module`` whose forward maps token ids ``[B, T]`` to logits
``[B, T, vocab_size]`` with gpt-rs's math:

- token embedding + learned position embedding (positions 0..T-1), then embedding dropout;
- ``block_count`` pre-LayerNorm blocks (eps 1e-5), each
  ``x = dropout_res(x) + attn(ln_1(x))`` then ``x = dropout_res(x) + ffn(ln_2(x))``: the residual
  dropout acts on the residual path itself, not on the branch output;
- attention: ``head_count`` heads (one fused q/k/v linear layer here, the same math as gpt-rs's
  per-head layers), scores scaled by 1/sqrt(head size), causal mask, softmax, dropout on the
  attention weights, heads concatenated, projection (with bias);
- feed-forward: linear to ``embedding_size * feed_forward_multiplier``, ReLU, linear back, dropout;
- final LayerNorm, then a bias-free linear head, not tied to the token embedding;
- initialisation: linear weights and embeddings normal(0, 0.02), biases zero, LayerNorms 1 and 0.

Speed, same math: ``GPT.loss`` fuses the head with the cross-entropy (``HeadCrossEntropy``);
in CPU training each block runs its halves through ``gpt_pipeline.model.fused`` (residual, bias and
dropouts written once, oneDNN products) and its heads through the C kernel of
``gpt_pipeline.model.native_attention`` (compiled on first use), else ``gpt_pipeline.model.fused_attention``
(no layout copies, no scores above the causal blocks); dropout masks are drawn from a
``torch.Generator`` that the training loop owns (``set_dropout_generator``), cheaply on CPU
(``dropped_positions``); generation uses a key/value cache (``KVCache``) and ``last_only``.
Not here: training (``training.py``), files (``checkpoint.py``, ``interop/gpt_rs.py``), sampling
loops (``generation.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_pipeline.model import native_attention
from gpt_pipeline.model.dropout import Dropout, dropped_positions  # noqa: F401 - re-exported
from gpt_pipeline.model.fused import FeedForwardResidual, LinearFunction, ProjectionResidual, linear
from gpt_pipeline.model.fused_attention import AttentionHeads, query_blocks
from gpt_pipeline.model.native_attention import NativeAttention, causal_weights

LAYER_NORM_EPS = 1e-5  # tch's LayerNorm default, as in gpt-rs
INIT_STD = 0.02  # std of the normal initialisation of linear weights and embeddings


@dataclass
class GPTConfig:
    """gpt-rs's ``transformer_config.ron``; the defaults are its example values (2,118,912 params)."""

    vocab_size: int = 2048  # tokens in the vocabulary (the tokenizer's vocab_size)
    embedding_size: int = 128  # width of the residual stream
    context_length: int = 64  # maximum tokens the model sees at once (learned positions)
    head_count: int = 4  # attention heads per block; must divide embedding_size
    block_count: int = 8  # transformer blocks
    feed_forward_multiplier: int = 4  # hidden width of the feed-forward = embedding_size * this
    embedding_dropout: float = 0.05  # dropout after token + position embedding
    attention_dropout: float = 0.05  # dropout on the attention weights (after softmax)
    feed_forward_dropout: float = 0.05  # dropout after the feed-forward's output linear layer
    residual_dropout: float = 0.05  # dropout on the residual path, twice per block

    def validate(self) -> GPTConfig:
        """Raise ``ValueError`` naming the first bad field; return ``self`` when all are fine."""
        for name in ("vocab_size", "embedding_size", "context_length", "head_count", "block_count",
                     "feed_forward_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.embedding_size % self.head_count:
            raise ValueError(
                f"GPTConfig.embedding_size={self.embedding_size} is not divisible by "
                f"head_count={self.head_count}"
            )
        for name in ("embedding_dropout", "attention_dropout", "feed_forward_dropout",
                     "residual_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {value!r}")
        return self

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
        return cls(**values).validate()

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
    """Keys and values of every block for the positions seen so far, ``[B, H, T, head_size]`` each."""

    def __init__(self, config: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, config.head_count, config.context_length, config.head_size)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.block_count)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.block_count)]
        self.length = 0  # positions filled, the same in every block


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_count = config.head_count
        self.head_size = config.head_size
        # q, k and v of every head in one layer: rows [q_0 .. q_H-1, k_0 .. k_H-1, v_0 .. v_H-1]
        self.qkv = nn.Linear(config.embedding_size, 3 * config.embedding_size)
        self.projection = nn.Linear(config.embedding_size, config.embedding_size)
        self.attention_dropout = Dropout(config.attention_dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        """``[B, T, C]`` -> ``[B, T, C]``, or ``[B, 1, C]`` for the last position when ``last_only``
        (keys and values are still computed, and cached, for every position)."""
        return self.projection(self.heads(x, cache, layer, last_only))

    def heads(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, last_only: bool = False,
        fused: bool = False,
    ) -> torch.Tensor:
        """The heads' outputs concatenated, before the projection: ``[B, T or 1, C]``; ``fused``
        (CPU training) computes q/k/v with ``LinearFunction`` and the heads with ``NativeAttention``
        (weights dropped among the ``causal_weights``) or, without a compiled kernel and with
        attention dropout on, ``AttentionHeads`` (weights dropped in ``query_blocks``)."""
        B, T, C = x.shape
        if last_only and T > 1:
            q = F.linear(x[:, -1:], self.qkv.weight[:C], self.qkv.bias[:C])  # [B, 1, C]
            k, v = F.linear(x, self.qkv.weight[C:], self.qkv.bias[C:]).split(C, dim=2)  # 2 x [B, T, C]
        elif fused:
            qkv = LinearFunction.apply(x.reshape(B * T, C), self.qkv.weight, self.qkv.bias).view(B, T, 3 * C)
            dropout = self.attention_dropout
            if native_attention.supports(qkv, self.head_count):  # the compiled kernel, dropout or not
                positions = dropout.positions(B * self.head_count * causal_weights(T))  # of [B, H, T(T+1)/2]
                return NativeAttention.apply(qkv, self.head_count, positions,
                                             dropout.scale if positions is not None else 1.0)
            if self.training and dropout.p > 0:
                positions = [dropout.positions(self.head_count * B * (r1 - r0) * r1)  # [H, B, r1 - r0, r1]
                             for r0, r1 in query_blocks(T)]
                return AttentionHeads.apply(qkv, self.head_count, positions, dropout.scale)
            q, k, v = qkv.split(C, dim=2)  # 3 x [B, T, C]
        else:
            q, k, v = self.qkv(x).split(C, dim=2)  # 3 x [B, T, C]
        Tq = q.size(1)
        q = q.view(B, Tq, self.head_count, self.head_size).transpose(1, 2)  # [B, H, Tq, hs]
        k = k.view(B, T, self.head_count, self.head_size).transpose(1, 2)  # [B, H, T, hs]
        v = v.view(B, T, self.head_count, self.head_size).transpose(1, 2)  # [B, H, T, hs]
        causal = Tq > 1  # a single query is the last position: it sees every key
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start : start + T] = k
            cache.values[layer][:, :, start : start + T] = v
            k = cache.keys[layer][:, :, : start + T]  # [B, H, start + T, hs]
            v = cache.values[layer][:, :, : start + T]  # [B, H, start + T, hs]
            if start > 0 and Tq > 1:
                raise ValueError(f"a filled KVCache takes one new position at a time, got {T}")
        if self.training and self.attention_dropout.p > 0:
            # explicit weights so that dropout acts on them as in gpt-rs; the causal mask is an
            # additive -inf bias above the diagonal, scaled scores and mask in one baddbmm
            bias = torch.full((T, T), float("-inf"), device=x.device, dtype=q.dtype).triu_(1)
            scores = torch.baddbmm(bias, q.reshape(B * self.head_count, T, self.head_size),
                                   k.reshape(B * self.head_count, T, self.head_size).transpose(1, 2),
                                   alpha=1.0 / math.sqrt(self.head_size))  # [B * H, T, T]
            weights = self.attention_dropout(scores.softmax(-1))  # [B * H, T, T]
            y = (weights @ v.reshape(B * self.head_count, T, self.head_size)).view(B, self.head_count, T, -1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, Tq, hs]
        return y.transpose(1, 2).reshape(B, Tq, C)  # [B, Tq, C], heads concatenated


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.embedding_size * config.feed_forward_multiplier
        self.input = nn.Linear(config.embedding_size, hidden)
        self.output = nn.Linear(hidden, config.embedding_size)
        self.dropout = Dropout(config.feed_forward_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output(F.relu(self.input(x))))  # [B, T, C]


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(config.embedding_size, eps=LAYER_NORM_EPS)
        self.attention = CausalSelfAttention(config)
        self.layer_norm_2 = nn.LayerNorm(config.embedding_size, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(config)
        self.residual_dropout = Dropout(config.residual_dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        # x = dropout_res(x) + attn(ln_1(x)); x = dropout_res(x) + ffn(ln_2(x))
        # what each residual dropout drops is drawn before its branch runs
        if cache is None and not last_only and x.device.type == "cpu" and x.dtype == torch.float32 \
                and torch.is_grad_enabled():
            return self._fused_forward(x)
        dropout = self.residual_dropout
        drawn = dropout.draw(x)
        branch = self.attention(self.layer_norm_1(x), cache, layer, last_only)  # [B, T or 1, C]
        if branch.size(1) != x.size(1):  # last_only: only the last position goes on
            mask = dropout.as_mask(drawn, x)
            x, drawn = x[:, -1:], None if mask is None else mask[:, -1:]
        x = dropout.add_to(branch, x, drawn)
        drawn = dropout.draw(x)
        branch = self.feed_forward(self.layer_norm_2(x))
        return dropout.add_to(branch, x, drawn)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for CPU training: the same math and random draws, in the passes of
        ``gpt_pipeline.model.fused`` (residual, bias and dropout written once per half-block)."""
        residual, attention, ff = self.residual_dropout, self.attention, self.feed_forward
        drawn = residual.draw(x)  # flat positions of x [B, T, C], or None
        y = attention.heads(self.layer_norm_1(x), fused=True)  # [B, T, C]
        x = ProjectionResidual.apply(  # x itself, not a view: its gradient is added in place
            y, x, attention.projection.weight, attention.projection.bias,
            drawn, residual.scale if drawn is not None else 1.0,
        )  # [B, T, C]
        drawn = residual.draw(x)
        h = self.layer_norm_2(x)  # [B, T, C]
        ff_drawn = ff.dropout.draw(h)  # after the residual's, as in the plain order
        return FeedForwardResidual.apply(
            h, x, ff.input.weight, ff.input.bias, ff.output.weight,
            ff.output.bias, ff_drawn, ff.dropout.scale if ff_drawn is not None else 1.0,
            drawn, residual.scale if drawn is not None else 1.0,
        )  # [B, T, C]


class HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, computed in row chunks.

    The same math as ``F.cross_entropy(hidden @ weight.T, targets)``, without the ``[N, V]``
    logits in memory: each chunk's logits (a few MB, cache-sized) are made, reduced and turned
    into their gradient at once (softmax - one-hot), whose products with ``weight`` and ``hidden``
    are the gradients of the inputs; the backward pass only scales them. On CPU this saves about
    40% of the head + loss time (no fresh 32 MB logits and gradient streaming through memory).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        N = hidden.size(0)
        rows = max(1, (1 << 19) // weight.size(0))  # ~2 MB of float32 logits per chunk
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_grad else None  # [N, C]
        grad_weight = torch.zeros_like(weight) if want_grad else None  # [V, C]
        for i in range(0, N, rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]  # [n, C], [n]
            logits = linear(h, weight)  # [n, V]
            rows_n = torch.arange(len(t), device=t.device)  # [n]
            target_logit = logits[rows_n, t]  # [n]
            high = logits.amax(dim=1, keepdim=True)  # [n, 1]
            e = logits.sub_(high).exp_()  # [n, V], in place: exp(logit - max)
            total_e = e.sum(dim=1, keepdim=True)  # [n, 1]
            total += (total_e.log().add_(high).squeeze(1) - target_logit).sum()  # logsumexp - target
            if want_grad:
                g = e.div_(total_e)  # [n, V] softmax
                g[rows_n, t] -= 1.0  # softmax - one-hot
                torch.mm(g, weight, out=grad_hidden[i : i + rows])  # [n, C]
                grad_weight.addmm_(g.t(), h)  # [V, C]
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.scale = 1.0 / N
        return total / N

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output * ctx.scale
        return grad_hidden * scale, grad_weight * scale, None


class GPT(nn.Module):
    """gpt-rs's transformer: token ids ``[B, T]`` (T <= context_length) -> logits ``[B, T, V]``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config.validate()
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.linear_head(self.forward_hidden(idx))  # [B, T, V]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all positions of ``forward(idx)`` against ``targets`` [B, T].

        Same value as ``F.cross_entropy(forward(idx).flatten(0, 1), targets.flatten())``; on CPU
        it never materialises the logits (see ``HeadCrossEntropy``).
        """
        hidden = self.forward_hidden(idx)  # [B, T, C]
        if hidden.device.type == "cpu" and hidden.dtype == torch.float32:
            return HeadCrossEntropy.apply(hidden.flatten(0, 1), self.linear_head.weight, targets.flatten())
        logits = self.linear_head(hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def forward_hidden(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Final-LayerNorm output ``[B, T, C]`` for ``idx`` ``[B, T]`` at positions from
        ``cache.length`` (0 without a cache); the cache, if any, is extended by T positions.
        With ``last_only`` the last block computes queries, feed-forward and output for the last
        position alone: ``[B, 1, C]`` (what sampling needs)."""
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape [B, T], got {tuple(idx.shape)}")
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than context_length="
                f"{self.config.context_length}"
            )
        positions = torch.arange(start, start + T, device=idx.device)  # [T]
        x = self.token_embedding(idx) + self.position_embedding(positions)  # [B, T, C]
        x = self.embedding_dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, last_only and layer == len(self.blocks) - 1)
        if cache is not None:
            cache.length += T
        return self.layer_norm(x)

    def new_cache(self, batch: int) -> KVCache:
        parameter = self.linear_head.weight
        return KVCache(self.config, batch, parameter.device, parameter.dtype)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.7,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``idx`` ``[B, T]`` followed by ``max_new_tokens`` sampled tokens: ``[B, T + max_new_tokens]``.

        gpt-rs's sampling (see ``gpt_pipeline.model.generation.generate``), with a key/value cache.
        """
        from gpt_pipeline.model.generation import generate

        return generate(self, idx, max_new_tokens, temperature, top_k, generator)
