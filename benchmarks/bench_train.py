"""Training-step speed: gpt_pipeline's GPT against a faithful per-head port of gpt-rs, same run.

A step is what gpt-rs does per iteration: forward, cross-entropy over all positions, backward,
every gradient element clamped to [-0.5, 0.5], AdamW (weight decay 0.1 on linear weights). Both
models use gpt-rs's example config (2,118,912 parameters) with its dropouts on, batch 64 x 64.
Steps alternate between the two models (which one goes first alternates too) so that both see
the same machine load; the script prints medians, tokens/s, the ratio, and model FLOPs
utilisation against a matmul peak measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--steps 10] [--threads N]

The port is ``gpt_pipeline_tests.reference`` (the oracle of the tests): ``ReferenceGPT``, one
query, key and value ``nn.Linear`` per head, the attention weights computed explicitly per head,
``F.dropout`` everywhere gpt-rs applies dropout; its ``optimizer`` and ``train_step``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: gpt_pipeline_tests

from gpt_pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from gpt_pipeline.training.loop import TrainConfig, make_optimizer  # noqa: E402
from gpt_pipeline_tests import reference  # noqa: E402
from gpt_pipeline_tests.reference import ReferenceGPT  # noqa: E402


def make_step(model, optimizer, x, y):
    """One training step of ``model``: ours as the training loop runs it, the port as gpt-rs does
    (``reference.train_step``)."""
    if not isinstance(model, GPT):
        return lambda: reference.train_step(model, optimizer, x, y)
    params = list(model.parameters())

    def step():
        loss = model.loss(x, y)  # the training loop's call: fused head + cross-entropy
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
    faithful = ReferenceGPT(config).train()
    assert ours.num_parameters() == faithful_params(faithful) == 2_118_912
    steps = {
        "faithful per-head port": make_step(faithful, reference.optimizer(faithful, 2e-4), x, y),
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
