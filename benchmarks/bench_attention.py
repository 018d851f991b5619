"""Attention heads in CPU training: the compiled kernel (``NativeAttention``) against the PyTorch
path it replaces (``CausalSelfAttention.heads`` with ``GPT_PIPELINE_NATIVE=0``: PyTorch operators), same run.

One call is what a block's attention costs in a training step: draw the dropout positions,
forward, backward, for gpt-rs's example config (batch 64 x 64, 4 heads of 32, attention dropout
0.05). Calls alternate between the two (which goes first alternates too) so that both see the
same machine load; the script prints medians, the ratio, and the attention's FLOP rate (the
products' FLOPs on and below the diagonal, forward and backward).

    .venv/bin/python benchmarks/bench_attention.py [--calls 40] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gpt_pipeline.model import native_build
from gpt_pipeline.model.dropout import Dropout
from gpt_pipeline.model.gpt import CausalSelfAttention, GPTConfig
from gpt_pipeline.model.native_attention import NativeAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="timed calls per path (after 3 warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c = GPTConfig()
    B, T, H, C = args.batch, c.context_length, c.head_count, c.embedding_size
    if native_build.kernel("attention", C // H) is None:
        raise SystemExit(f"no native attention kernel: {native_build.why_not('attention', C // H)}")
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * C, generator=g).requires_grad_(True)  # [B, T, 3C]
    grad = torch.randn(B, T, C, generator=g)  # [B, T, C]
    dropout = Dropout(c.attention_dropout)
    dropout.generator = torch.Generator().manual_seed(1)
    plain_heads = CausalSelfAttention(c).train()
    plain_heads.attention_dropout.generator = torch.Generator().manual_seed(1)

    def native():
        positions = dropout.positions(B * H * T * T)  # [B, H, T, T]
        NativeAttention.apply(qkv, H, positions, dropout.scale).backward(grad)

    def plain():  # the kernels turned off: the heads' PyTorch operators
        os.environ["GPT_PIPELINE_NATIVE"] = "0"
        try:
            plain_heads.heads(qkv).backward(grad)
        finally:
            del os.environ["GPT_PIPELINE_NATIVE"]

    paths = {"plain heads (PyTorch)": plain, "NativeAttention (C)": native}
    times: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths.items())
    for round_ in range(args.calls + 3):
        for name, call in order if round_ % 2 == 0 else order[::-1]:
            qkv.grad = None
            start = time.perf_counter()
            call()
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    hs = C // H
    flops = 6 * 2 * B * H * (T * (T + 1) // 2) * hs  # 2 products forward, 4 backward, causal part
    print(f"threads={torch.get_num_threads()} batch={B} T={T} heads={H}x{hs} calls={args.calls} "
          f"attention={flops / 1e6:.0f} MFLOP per call")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:26s} median {median * 1e3:6.2f} ms (min {min(times[name]) * 1e3:6.2f})  "
              f"{flops / median / 1e9:5.1f} GFLOP/s")
    ratio = medians["plain heads (PyTorch)"] / medians["NativeAttention (C)"]
    paired = statistics.median(a / b for a, b in zip(*times.values()))
    saved = (medians["plain heads (PyTorch)"] - medians["NativeAttention (C)"]) * c.block_count
    print(f"speed-up, plain / native: {ratio:.2f}x on medians, {paired:.2f}x median of pairs "
          f"({saved * 1e3:.0f} ms a training step over {c.block_count} blocks)")


if __name__ == "__main__":
    main()
