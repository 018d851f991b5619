"""A short check of the core on a CUDA GPU: training (float32 and bfloat16 autocast), resuming,
DDP over nccl, greedy generation against gpt-rs's loop, and step time against the faithful port.

Needs torch, numpy and safetensors only (no Dagster, MLflow or polars), so it runs on a bare GPU
machine. Data: stories drawn from a fixed random Markov chain (the loss has something to learn).
Prints one line per check and writes every figure to ``--out`` (JSON).

    python benchmarks/gpu_check.py [--device cuda] [--steps 300] [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_generate import gpt_rs_loop  # noqa: E402
from bench_train import make_step  # noqa: E402

from gpt_pipeline_tests.reference import ReferenceGPT as FaithfulGPT  # noqa: E402
from gpt_pipeline_tests.reference import optimizer as faithful_optimizer  # noqa: E402

from gpt_pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from gpt_pipeline.data.tokens import TokenArray  # noqa: E402
from gpt_pipeline.training.loop import TrainConfig, make_optimizer, train  # noqa: E402


def markov_stories(count: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` stories of 80..300 tokens from a random chain with 4 likely successors a token."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, size=(vocab, 4))
    stories = []
    for _ in range(count):
        token, story = int(rng.integers(vocab)), []
        for _ in range(int(rng.integers(80, 300))):
            story.append(token)
            token = int(successors[token, rng.integers(4)])
        stories.append(story)
    return stories


def losses(result) -> list[tuple[int, float, float]]:
    return [(e.step, e.train_loss, e.test_loss) for e in result.evaluations]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device, count: int) -> list[float]:
    times = []
    for i in range(count + 3):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    report: dict = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(report), flush=True)
    config = GPTConfig()
    stories = markov_stories(3300, config.vocab_size, 1)
    train_data = TokenArray.from_lists(stories[:3000], config.vocab_size)
    test_data = TokenArray.from_lists(stories[3000:], config.vocab_size)
    base = {"training_iterations": args.steps, "evaluation_interval": args.steps // 3,
            "evaluation_iterations": 5, "device": args.device}
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))

    def check(name, function):
        start = time.perf_counter()
        try:
            report[name] = function()
            report[name]["seconds"] = round(time.perf_counter() - start, 2)
        except Exception as error:  # report and go on to the next check
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(name, json.dumps({k: v for k, v in report[name].items() if k != "traceback"}), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2))

    results = {}

    def run_training(precision):
        def go():
            result = train(config, TrainConfig(**base, precision=precision), train_data, test_data,
                           work / precision)
            results[precision] = result
            first, last = result.evaluations[0], result.evaluations[-1]
            assert last.test_loss < first.test_loss - 0.5, (first.test_loss, last.test_loss)
            return {"losses": losses(result), "tokens_per_second": round(result.tokens_per_second),
                    "model_device": str(next(result.model.parameters()).device)}
        return go

    check("train_float32", run_training("float32"))
    check("train_bfloat16", run_training("bfloat16"))

    def resume():
        folder = work / "float32"  # the float32 run's checkpoints: drop all after the first interval
        kept = args.steps // 3
        for path in folder.glob("*.safetensors"):
            if path.name != f"{kept}.safetensors":
                path.unlink()
        resumed = train(config, TrainConfig(**base), train_data, test_data, folder)
        full = {s: (a, b) for s, a, b in losses(results["float32"])}
        again = losses(resumed)
        gap = max(abs(a - b) for s, *pair in again if s > kept for a, b in zip(pair, full[s]))
        return {"resumed_from": resumed.resumed_from, "losses": again, "max_loss_gap_vs_uninterrupted": gap}

    check("resume", resume)

    def ddp_nccl():
        import torch.distributed as dist

        from gpt_pipeline.training.distributed import DDPReplica

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=0, world_size=1)
        try:
            cfg = TrainConfig(**{**base, "training_iterations": 60, "evaluation_interval": 30})
            replica = DDPReplica(0, 1, torch.device(args.device, 0), cfg.seed)
            result = train(config, cfg, train_data, test_data, work / "ddp", replica=replica)
            plain = train(config, cfg, train_data, test_data)
            gap = max(abs(a - b) for x, y in zip(losses(result), losses(plain)) for a, b in zip(x[1:], y[1:]))
            return {"backend": dist.get_backend(), "losses": losses(result), "max_loss_gap_vs_plain": gap}
        finally:
            dist.destroy_process_group()

    check("ddp_nccl_one_process", ddp_nccl)

    def generation():
        model = results["float32"].model.to(device).eval()
        prompts = torch.randint(0, config.vocab_size, (16, 8), generator=torch.Generator().manual_seed(3))
        count = 100
        ours = model.generate(prompts.to(device), count, top_k=1).cpu()
        same = all(gpt_rs_loop(model_on_device(model, device), prompts[i].tolist(), count,
                               config.context_length, 0.7, None, greedy=True) == ours[i].tolist()
                   for i in range(4))
        sync(device)
        start = time.perf_counter()
        gpt_rs_loop(model_on_device(model, device), prompts[0].tolist(), count, config.context_length, 0.7,
                    torch.Generator().manual_seed(0))
        loop_rate = count / (time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(prompts.to(device), count, generator=torch.Generator(device=device).manual_seed(0))
        sync(device)
        batch_rate = prompts.size(0) * count / (time.perf_counter() - start)
        return {"greedy_equals_gpt_rs_loop": same, "gpt_rs_loop_tokens_per_second": round(loop_rate),
                "ours_batch16_tokens_per_second": round(batch_rate), "ratio": round(batch_rate / loop_rate, 1)}

    check("generation", generation)

    def step_time():
        torch.manual_seed(0)
        x = torch.randint(0, config.vocab_size, (64, config.context_length), device=device)
        y = torch.randint(0, config.vocab_size, (64, config.context_length), device=device)
        ours = GPT(config).to(device).train()
        ours.set_dropout_generator(torch.Generator(device=device).manual_seed(1))
        faithful = FaithfulGPT(config).to(device).train()
        medians = {
            "faithful_ms": statistics.median(timed(make_step(faithful, faithful_optimizer(faithful, 2e-4), x, y),
                                                   device, 30)) * 1e3,
            "ours_ms": statistics.median(timed(make_step(ours, make_optimizer(ours, TrainConfig(), device), x, y),
                                               device, 30)) * 1e3,
        }
        return {**{k: round(v, 2) for k, v in medians.items()},
                "ratio": round(medians["faithful_ms"] / medians["ours_ms"], 2)}

    check("step_time", step_time)


def model_on_device(model: GPT, device: torch.device):
    """gpt-rs's loop feeds CPU tensors: move each window to the model's device."""
    return lambda idx: model(idx.to(device)).cpu()


if __name__ == "__main__":
    main()
