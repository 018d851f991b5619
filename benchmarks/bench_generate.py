"""Generation speed: GPT.generate against gpt-rs's sampling loop, on the same weights, same run.

gpt-rs's loop (``gpt_rs_loop`` below), for every new token: the last ``context_length`` tokens
right-padded with 0 to ``context_length``, the whole window through the model, softmax over every
position, one multinomial draw per position, keep the draw at the last real position. It runs on
the faithful per-head port (``bench_train.FaithfulGPT``) holding our model's weights (exported
with ``save_gpt_rs_checkpoint``), one prompt at a time, as gpt-rs does.

``GPT.generate`` keeps a key/value cache while the window fills, sends only the last position
through the head, and samples a batch of prompts at once. The script prints medians of tokens/s
for batch 1 and for a batch of ``--batch`` samples, the ratios, model FLOPs utilisation against a
matmul peak measured in the same run, and checks that greedy decoding picks the same tokens.

    .venv/bin/python benchmarks/bench_generate.py [--tokens 256] [--batch 16] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import FaithfulGPT, load_gpt_rs_tensors, matmul_peak  # noqa: E402

from gpt_pipeline.interop.gpt_rs import save_gpt_rs_checkpoint  # noqa: E402
from gpt_pipeline.model.gpt import GPT, GPTConfig  # noqa: E402


@torch.no_grad()
def gpt_rs_loop(model, prompt: list[int], count: int, context_length: int, temperature: float,
                generator: torch.Generator, greedy: bool = False) -> list[int]:
    tokens = list(prompt)
    for _ in range(count):
        window = tokens[-context_length:]
        padded = torch.tensor([window + [0] * (context_length - len(window))])  # [1, ctx]
        logits = model(padded)[0]  # [ctx, V], every position
        if greedy:
            tokens.append(int(logits[len(window) - 1].argmax()))
            continue
        probabilities = torch.softmax(logits / temperature, dim=-1)  # [ctx, V]
        sample = torch.multinomial(probabilities, 1, generator=generator).view(context_length)
        tokens.append(int(sample[len(window) - 1]))
    return tokens


def block_flops_per_position(c: GPTConfig) -> int:
    C = c.embedding_size
    return 2 * c.block_count * (4 * C * C + 2 * C * C * c.feed_forward_multiplier)


def loop_flops(c: GPTConfig, prompt: int, count: int) -> float:
    """gpt-rs's loop: every step the whole padded window, head at every position."""
    per_window = c.context_length * (block_flops_per_position(c) + 2 * c.embedding_size * c.vocab_size)
    attention = 2 * 2 * c.block_count * c.context_length**2 * c.embedding_size
    return count * (per_window + attention)


def generate_flops(c: GPTConfig, prompt: int, count: int) -> float:
    """GPT.generate: one new position while the window fills (the whole prompt first), then the
    whole window; in the last block only keys and values for every position; head once."""
    C, L = c.embedding_size, c.block_count
    last_position = 2 * (2 * C * C + 2 * C * C * c.feed_forward_multiplier)  # q, projection, ffn
    total, n = 0.0, prompt
    for step in range(count):
        if n <= c.context_length:
            positions, keys = (n if step == 0 else 1), n
        else:
            positions, keys = c.context_length, c.context_length
        per_block = block_flops_per_position(c) // L
        total += (L - 1) * (positions * per_block + 4 * positions * keys * C)
        total += positions * 4 * C * C + last_position + 4 * keys * C
        total += 2 * C * c.vocab_size
        n += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate per sample")
    parser.add_argument("--batch", type=int, default=16, help="samples per call in the batched run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig()
    ours = GPT(config).eval()
    ours.reset_parameters(torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_gpt_rs_checkpoint(Path(tmp) / "gpt_rs.safetensors", ours)
        faithful = load_gpt_rs_tensors(FaithfulGPT(config), load_file(str(path))).eval()
    prompt = [1]  # gpt-rs's README prompt "Once" is one token
    with torch.no_grad():
        idx = torch.tensor([list(range(10, 74))])
        assert torch.allclose(ours(idx), faithful(idx), atol=1e-4)

    greedy_ours = ours.generate(torch.tensor([prompt]), 100, top_k=1)[0].tolist()
    greedy_theirs = gpt_rs_loop(faithful, prompt, 100, config.context_length, 1.0, None, greedy=True)
    print(f"greedy tokens equal to gpt-rs's loop (100 tokens): {greedy_ours == greedy_theirs}")

    runs = {
        "gpt-rs loop, per-head port, batch 1": (
            lambda g: gpt_rs_loop(faithful, prompt, args.tokens, config.context_length, 0.7, g), 1,
            loop_flops(config, len(prompt), args.tokens)),
        "GPT.generate, batch 1": (
            lambda g: ours.generate(torch.tensor([prompt]), args.tokens, 0.7, None, g), 1,
            generate_flops(config, len(prompt), args.tokens)),
        f"GPT.generate, batch {args.batch}": (
            lambda g: ours.generate(torch.tensor([prompt] * args.batch), args.tokens, 0.7, None, g), args.batch,
            args.batch * generate_flops(config, len(prompt), args.tokens)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):
        for name, (run, _, _) in runs.items():
            start = time.perf_counter()
            run(torch.Generator().manual_seed(repeat))
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    peak = matmul_peak()
    print(f"threads={torch.get_num_threads()} tokens={args.tokens} repeats={args.repeats} "
          f"matmul peak={peak / 1e9:.0f} GFLOP/s")
    rates = {}
    for name, (_, batch, flops) in runs.items():
        median = statistics.median(times[name])
        rates[name] = batch * args.tokens / median
        print(f"{name:40s} {median * 1e3:8.0f} ms {rates[name]:8.0f} tokens/s  MFU {flops / median / peak:5.1%}")
    base = rates["gpt-rs loop, per-head port, batch 1"]
    for name, rate in rates.items():
        print(f"ratio to gpt-rs's loop: {name:40s} {rate / base:6.2f}x")


if __name__ == "__main__":
    main()
