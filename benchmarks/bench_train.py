"""Training-step speed: gpt_pipeline's GPT against a faithful per-head port of gpt-rs, same run.

A step is what gpt-rs does per iteration: forward, cross-entropy over all positions, backward,
every gradient element clamped to [-0.5, 0.5], AdamW (weight decay 0.1 on linear weights). Both
models use gpt-rs's example config (2,118,912 parameters) with its dropouts on, batch 64 x 64.
Steps alternate between the two models (which one goes first alternates too) so that both see
the same machine load; the script prints medians, tokens/s, the ratio, and model FLOPs
utilisation against a matmul peak measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--steps 10] [--threads N]

``FaithfulGPT`` below is the port: one query, key and value ``nn.Linear`` per head, the attention
weights computed explicitly per head, ``nn.Dropout`` everywhere gpt-rs applies dropout.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.training.loop import TrainConfig, make_optimizer


class FaithfulHead(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        hs = c.embedding_size // c.head_count
        self.query, self.key, self.value = (nn.Linear(c.embedding_size, hs) for _ in range(3))
        self.dropout = nn.Dropout(c.attention_dropout)
        self.register_buffer("omit", torch.ones(c.context_length, c.context_length, dtype=torch.bool).triu(1))
        self.scale = 1.0 / math.sqrt(hs)

    def forward(self, x):
        T = x.size(1)
        weights = (self.query(x) @ self.key(x).transpose(-2, -1)) * self.scale  # [B, T, T]
        weights = weights.masked_fill(self.omit[:T, :T], float("-inf")).softmax(-1)
        return self.dropout(weights) @ self.value(x)  # [B, T, hs]


class FaithfulBlock(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(c.embedding_size)
        self.heads = nn.ModuleList(FaithfulHead(c) for _ in range(c.head_count))
        self.projection = nn.Linear(c.embedding_size, c.embedding_size)
        self.layer_norm_2 = nn.LayerNorm(c.embedding_size)
        hidden = c.embedding_size * c.feed_forward_multiplier
        self.input, self.output = nn.Linear(c.embedding_size, hidden), nn.Linear(hidden, c.embedding_size)
        self.ff_dropout, self.residual_dropout = nn.Dropout(c.feed_forward_dropout), nn.Dropout(c.residual_dropout)

    def forward(self, x):
        normed = self.layer_norm_1(x)
        x = self.residual_dropout(x) + self.projection(torch.cat([h(normed) for h in self.heads], -1))
        ff = self.ff_dropout(self.output(F.relu(self.input(self.layer_norm_2(x)))))
        return self.residual_dropout(x) + ff


class FaithfulGPT(nn.Module):
    """gpt-rs's model.rs, module for module."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        self.position_embedding = nn.Embedding(c.context_length, c.embedding_size)
        self.dropout = nn.Dropout(c.embedding_dropout)
        self.blocks = nn.Sequential(*(FaithfulBlock(c) for _ in range(c.block_count)))
        self.layer_norm = nn.LayerNorm(c.embedding_size)
        self.linear_head = nn.Linear(c.embedding_size, c.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.size(1)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding.weight[:T])
        return self.linear_head(self.layer_norm(self.blocks(x)))


def load_gpt_rs_tensors(model: FaithfulGPT, tensors: dict[str, torch.Tensor]) -> FaithfulGPT:
    """Load a gpt-rs checkpoint's tensors (``transformer.…`` names) into the port."""
    state = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("transformer.").replace("multi_attention_head.", "")
        state[name.replace("feed_forward.", "")] = tensor
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state) - {n for n in model.state_dict() if n.endswith("omit")}
    assert not missing, missing
    return model


def faithful_optimizer(model: nn.Module, lr: float) -> torch.optim.AdamW:
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8)


def make_step(model, optimizer, x, y):
    params = list(model.parameters())

    def step():
        if isinstance(model, GPT):
            loss = model.loss(x, y)  # the training loop's call: fused head + cross-entropy
        else:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # [B * T, V] logits
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, 0.5)
        optimizer.step()
        return loss

    return step


def step_flops(c: GPTConfig, batch: int) -> float:
    """Matmul FLOPs of one training step (forward x 3): linear layers, attention, head."""
    tokens = batch * c.context_length
    C, T = c.embedding_size, c.context_length
    linear = c.block_count * (3 * C * C + C * C + 2 * C * C * c.feed_forward_multiplier) + C * c.vocab_size
    attention = c.block_count * 2 * 2 * batch * T * T * C
    return 3 * (2 * linear * tokens + attention)


def matmul_peak(seconds: float = 2.0) -> float:
    """Best FLOP/s of a 1024^3 float32 matmul over ``seconds``."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 1024**3 / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig()
    torch.manual_seed(0)
    x = torch.randint(0, config.vocab_size, (args.batch, config.context_length))
    y = torch.randint(0, config.vocab_size, (args.batch, config.context_length))

    ours = GPT(config).train()
    ours.set_dropout_generator(torch.Generator().manual_seed(1))
    faithful = FaithfulGPT(config).train()
    assert ours.num_parameters() == faithful_params(faithful) == 2_118_912
    steps = {
        "faithful per-head port": make_step(faithful, faithful_optimizer(faithful, 2e-4), x, y),
        "gpt_pipeline GPT": make_step(ours, make_optimizer(ours, TrainConfig(), torch.device("cpu")), x, y),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    for round_ in range(args.steps + 2):
        for name, step in order if round_ % 2 == 0 else order[::-1]:  # each model first every other round
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    peak = matmul_peak()
    flops = step_flops(config, args.batch)
    tokens = args.batch * config.context_length
    print(f"threads={torch.get_num_threads()} batch={args.batch}x{config.context_length} "
          f"steps={args.steps} matmul peak={peak / 1e9:.0f} GFLOP/s step={flops / 1e9:.1f} GFLOP")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:24s} median {median * 1e3:7.1f} ms/step (min {min(times[name]) * 1e3:7.1f}) "
              f"{tokens / median:8.0f} tokens/s  MFU {flops / median / peak:5.1%}")
    ratio = medians["faithful per-head port"] / medians["gpt_pipeline GPT"]
    best = min(times["faithful per-head port"]) / min(times["gpt_pipeline GPT"])
    paired = statistics.median(f / o for f, o in zip(times["faithful per-head port"], times["gpt_pipeline GPT"]))
    print(f"speed-up, faithful / ours: {ratio:.2f}x on medians, {best:.2f}x on minima, "
          f"{paired:.2f}x median of back-to-back pairs")


def faithful_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
