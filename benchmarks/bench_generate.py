"""Generation speed: GPT.generate against gpt-rs's current sampling loop, same weights, same run.

The peer is gpt-rs's loop as it is today (``gpt_pipeline_tests.reference.generate`` on
``ReferenceGPT``, gpt-rs's per-head model, holding our model's weights): for every new token the
last ``context_length`` tokens right-padded with 0, the whole window through the model, the
logits at the last real position only, divided by the temperature, one softmax, one
multinomial draw. gpt-rs samples one prompt at a time, so its tokens/s is the same for any
number of prompts; ``GPT.generate`` samples a batch of prompts in one call.

Printed: tokens/s of the peer and of ours for 1 prompt and for ``--batches`` prompts in one call
(medians of ``--repeats``; ``GPT.generate`` runs every block in one call of the C kernel of
``native_decode``, and the same loop with its steps through ``GPT.forward`` (PyTorch operators)
is timed beside it), the ratio ours / peer, whether greedy decoding picks the same tokens
(and sampling with the same seed, one prompt), and the fraction of the floor. The floor: with a
key/value cache while the window fills (one position per token), then, once the window is full,
a whole-window forward per token (gpt-rs's learned absolute positions move every position:
~2 x block parameters x context_length FLOPs), the head for one position; its time at this
machine's sustained FLOP rate for the same products (the window's four linear layers with
``RATE_ROWS`` rows, where a product is large enough to run near the cores' peak; measured in this
run). A batch of prompts has the same floor per prompt.

    .venv/bin/python benchmarks/bench_generate.py [--tokens 256] [--batches 8,16] [--repeats 3] [--threads 2]
        [--clock wall|cpu] [--beside-training] [--old-tree DIR]

``--beside-training`` starts a real ``gpt-pipeline train`` (a small dataset made with
``gpt-pipeline tokenize`` in a temporary folder, 2 threads) before the timings and stops it after
them: sampling on a machine that is also training, the normal case for a server beside a
schedule. ``--old-tree DIR`` also times ``GPT.generate`` of the code in DIR (e.g. ``git worktree
add /tmp/old169 169c6e5``) in a subprocess right after ours, same config, prompts and tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: gpt_pipeline_tests

from gpt_pipeline.model import fused  # noqa: E402
from gpt_pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from gpt_pipeline_tests import reference  # noqa: E402
from gpt_pipeline_tests.reference import ReferenceGPT  # noqa: E402


def gpt_rs_loop(model, prompt: list[int], count: int, context_length: int, temperature: float,
                generator: torch.Generator | None, greedy: bool = False) -> list[int]:
    """``reference.generate`` for any callable ``model`` (ids ``[1, ctx]`` -> logits), as
    ``gpu_check.py`` calls it."""
    return reference.generate(model, prompt, count, temperature, generator, greedy, context_length)


def block_parameters(c: GPTConfig) -> int:
    C, F = c.embedding_size, c.embedding_size * c.feed_forward_multiplier
    return c.block_count * (3 * C * C + C * C + 2 * C * F)  # the products' weights


def floor_flops(c: GPTConfig, prompt: int, count: int) -> float:
    """FLOPs no implementation of gpt-rs's semantics avoids, per sequence (see the docstring)."""
    C, L, ctx = c.embedding_size, c.block_count, c.context_length
    total = 2 * block_parameters(c) * prompt  # the prompt, once
    for n in range(prompt, prompt + count):  # n tokens known, pick token n
        if n <= ctx:  # one new position against n keys (the prompt's came with it)
            positions = 1 if n > prompt else 0
            total += positions * 2 * block_parameters(c) + L * 4 * n * C
        else:  # the whole window, causal attention
            total += 2 * block_parameters(c) * ctx + L * 4 * (ctx * (ctx + 1) // 2) * C
        total += 2 * C * c.vocab_size  # the head, one position
    return total


RATE_ROWS = 4096  # rows of the products the machine's FLOP rate is measured on


def product_rate(c: GPTConfig, rows: int, seconds: float = 0.3, clock=time.perf_counter) -> float:
    """Best FLOP/s of the window's four linear products (``rows`` = positions x prompts) over
    ``seconds``, through ``torch.mm`` or oneDNN's linear (``fused.linear``), whichever is faster."""
    C, F = c.embedding_size, c.embedding_size * c.feed_forward_multiplier
    g = torch.Generator().manual_seed(0)
    shapes = [(C, 3 * C), (C, C), (C, F), (F, C)]
    pairs = [(torch.randn(rows, i, generator=g), torch.randn(i, o, generator=g)) for i, o in shapes]
    weights = [b.t().contiguous() for _, b in pairs]  # [out, in], as the model holds them
    outs = [torch.empty(rows, o) for _, o in shapes]
    flops = sum(2 * rows * i * o for i, o in shapes)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = clock()
        for (a, b), out in zip(pairs, outs):
            torch.mm(a, b, out=out)
        middle = clock()
        for (a, _), w in zip(pairs, weights):
            fused.linear(a, w)
        end_ = clock()
        best = max(best, flops / max(middle - start, 1e-9), flops / max(end_ - middle, 1e-9))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate per prompt")
    parser.add_argument("--batches", default="8,16", help="prompts per call besides 1, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (gpt-rs's example: 2)")
    parser.add_argument("--greedy-tokens", type=int, default=100, help="tokens of the greedy comparison")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (with --threads 1, steadier on a shared machine)")
    parser.add_argument("--beside-training", action="store_true", help="time beside a running gpt-pipeline train")
    parser.add_argument("--old-tree", type=Path, help="also time GPT.generate of the code in this folder")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.beside_training:
            stack.enter_context(training_beside())
        measure(args)


@contextlib.contextmanager
def training_beside():
    """A ``gpt-pipeline train`` process running for the ``with`` block (stopped afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        cli = [sys.executable, "-m", "gpt_pipeline"]
        subprocess.run([*cli, "tokenize", "--num-stories", "3000", "--vocab-size", "300", "--output-dir",
                        f"{tmp}/data"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        training = subprocess.Popen([*cli, "train", "--dataset-dir", f"{tmp}/data", "--output-dir", f"{tmp}/out",
                                     "--training-iterations", "1000000", "--evaluation-interval", "100000",
                                     "--threads", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)  # past its start-up: training
            if training.poll() is not None:
                raise SystemExit(f"gpt-pipeline train exited with {training.returncode} before the timings")
            print(f"beside a running `gpt-pipeline train` (pid {training.pid}, 2 threads)")
            yield
        finally:
            training.terminate()
            training.wait()


OLD_TIMING = """
import json, statistics, sys, time, torch
from gpt_pipeline.model.gpt import GPT, GPTConfig
torch.set_num_threads({threads})
model = GPT(GPTConfig()).eval()
model.reset_parameters(torch.Generator().manual_seed(0))
out = {{}}
for b in {batches}:
    times = []
    for repeat in range({repeats} + 1):
        start = time.perf_counter()
        model.generate(torch.tensor([[1]] * b), {tokens}, 0.7, None, torch.Generator().manual_seed(repeat))
        if repeat:
            times.append(time.perf_counter() - start)
    out[b] = b * {tokens} / statistics.median(times)
print(json.dumps(out))
"""


def old_rates(tree: Path, threads: int, batches: list[int], repeats: int, tokens: int) -> dict[int, float]:
    """tokens/s of ``GPT.generate`` of the code in ``tree``, per number of prompts."""
    code = OLD_TIMING.format(threads=threads, batches=batches, repeats=repeats, tokens=tokens)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                          check=True, capture_output=True, text=True)
    return {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def without_kernel(run):
    """``run()`` with the C kernels turned off (``GPT_PIPELINE_NATIVE=0``)."""
    before = os.environ.get("GPT_PIPELINE_NATIVE")
    os.environ["GPT_PIPELINE_NATIVE"] = "0"
    try:
        return run()
    finally:
        if before is None:
            del os.environ["GPT_PIPELINE_NATIVE"]
        else:
            os.environ["GPT_PIPELINE_NATIVE"] = before


def measure(args) -> None:
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    config = GPTConfig()
    ours = GPT(config).eval()
    ours.reset_parameters(torch.Generator().manual_seed(0))
    peer = ReferenceGPT.from_gpt(ours).eval()
    prompt = [1]  # gpt-rs's README prompt "Once" is one token
    with torch.no_grad():
        idx = torch.tensor([list(range(10, 74))])
        assert torch.allclose(ours(idx), peer(idx), atol=1e-4)

    greedy_ours = ours.generate(torch.tensor([prompt]), args.greedy_tokens, top_k=1)[0].tolist()
    greedy_peer = reference.generate(peer, prompt, args.greedy_tokens, greedy=True)
    sampled_ours = ours.generate(torch.tensor([prompt]), args.greedy_tokens, 0.7,
                                 generator=torch.Generator().manual_seed(1))[0].tolist()
    sampled_peer = reference.generate(peer, prompt, args.greedy_tokens, 0.7, torch.Generator().manual_seed(1))
    print(f"greedy tokens identical to gpt-rs's loop ({args.greedy_tokens} tokens): {greedy_ours == greedy_peer}")
    print(f"sampled tokens identical, same seed, 1 prompt ({args.greedy_tokens} tokens): "
          f"{sampled_ours == sampled_peer}")

    batches = [1] + [int(b) for b in args.batches.split(",") if b]
    runs = {"gpt-rs loop (reference), 1 prompt": (
        lambda g: reference.generate(peer, prompt, args.tokens, 0.7, g), 1)}
    for b in batches:  # GPT.generate without the C kernel: its steps through GPT.forward
        runs[f"GPT.generate, PyTorch step, {b} prompt{'s' if b > 1 else ''}"] = (
            lambda g, b=b: without_kernel(lambda: ours.generate(torch.tensor([prompt] * b), args.tokens, 0.7, None, g)),
            b)
    for b in batches:
        runs[f"GPT.generate, {b} prompt{'s' if b > 1 else ''} in one call"] = (
            lambda g, b=b: ours.generate(torch.tensor([prompt] * b), args.tokens, 0.7, None, g), b)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rate = 0.0  # best FLOP/s of the same products at RATE_ROWS rows, measured between the runs
    for repeat in range(args.repeats + 1):
        for name, (run, _) in runs.items():
            start = clock()
            run(torch.Generator().manual_seed(repeat))
            if repeat:  # the first round warms up
                times[name].append(clock() - start)
        rate = max(rate, product_rate(config, RATE_ROWS, clock=clock))
    floor = floor_flops(config, len(prompt), args.tokens)
    print(f"threads={torch.get_num_threads()} tokens={args.tokens} repeats={args.repeats} clock={args.clock} "
          f"floor={floor / 1e9:.2f} GFLOP per prompt, {floor / rate * 1e3:.0f} ms at {rate / 1e9:.0f} GFLOP/s "
          f"(the same products, {RATE_ROWS} rows)")
    rates = {}
    for name, (_, b) in runs.items():
        median = statistics.median(times[name])
        rates[name] = b * args.tokens / median
        print(f"{name:47s} {median * 1e3:8.0f} ms {rates[name]:8.0f} tokens/s  "
              f"floor {b * floor / rate * 1e3:6.0f} ms: {b * floor / rate / median:5.1%} of the floor")
    base = rates["gpt-rs loop (reference), 1 prompt"]
    for name, rate in rates.items():
        if not name.startswith("gpt-rs"):
            print(f"ratio ours / gpt-rs's loop: {name:47s} {rate / base:6.2f}x")
    if args.old_tree:
        for b, old in old_rates(args.old_tree, torch.get_num_threads(), batches, args.repeats, args.tokens).items():
            name = f"GPT.generate, {b} prompt{'s' if b > 1 else ''} in one call"
            print(f"old code ({args.old_tree}): {name:40s} {old:8.0f} tokens/s; this code {rates[name]:8.0f} "
                  f"({rates[name] / old:5.2f}x)")


if __name__ == "__main__":
    main()
