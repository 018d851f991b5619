"""Evaluation time: ``gpt_pipeline.evaluation.evaluate`` of a stored model on its dataset's splits.

By default the quickstart model that ``make run`` stores (``data/trained_model/default.safetensors``
with ``data/bpe_tokenizer.json`` and ``data/tokenized_dataset.parquet``) with 128 held-out stories,
the model_evaluation asset's defaults. Prints the CPU, the threads, each repeat's seconds per phase
(the bigram and the training words, the likelihood, the continuations, the text metrics), the
median total of ``--repeats``, and the figures' table of the last repeat (the same every repeat:
the seed is fixed). The target: under 60 s for the quickstart model on 2 cores. The CPU time
(all threads of this process) is printed beside the wall time, and the load average after: on a
machine others share, the wall time says more about them than about the evaluation.

    .venv/bin/python benchmarks/bench_evaluation.py [--model PATH] [--tokenizer PATH] [--dataset PATH]
        [--stories 128] [--repeats 3] [--threads 2] [--samples 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.evaluation.evaluate import collapse_gate, evaluate
from gpt_pipeline.evaluation.report import markdown_table, samples_markdown
from gpt_pipeline.tokenizer.bundle import read_bundle
from gpt_pipeline.training.checkpoint import load_checkpoint

DATA = Path(__file__).resolve().parent.parent / "data"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DATA / "trained_model" / "default.safetensors"))
    parser.add_argument("--tokenizer", default=str(DATA / "bpe_tokenizer.json"))
    parser.add_argument("--dataset", default=str(DATA / "tokenized_dataset.parquet"))
    parser.add_argument("--stories", type=int, default=EvaluationConfig.stories)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=0, help="also print this many continuations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in (args.model, args.tokenizer, args.dataset):
        if not Path(path).is_file():
            raise SystemExit(f"bench_evaluation: {path} does not exist (run `make run` first, or name the files)")
    model, _ = load_checkpoint(args.model)
    tokenizer = read_bundle(Path(args.tokenizer))
    train, test = load_splits(TableFile.stored_at(Path(args.dataset)))
    config = EvaluationConfig(stories=args.stories)
    print(f"CPU: {cpu_name()}; {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {model.num_parameters():,} parameters, {model.config.to_dict()}")
    print(f"test split: {len(test)} stories, {len(test.tokens):,} tokens; train split: {len(train)} stories")
    totals, cpu = [], []
    for repeat in range(args.repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        evaluation = evaluate(model, tokenizer, train, test, config)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in evaluation.seconds.items())
        print(f"repeat {repeat + 1}: {totals[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU ({phases})")
    print(f"median of {args.repeats}: {statistics.median(totals):.2f} s wall, {statistics.median(cpu):.2f} s CPU "
          f"(all threads) for {len(evaluation.stories)} stories; load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(evaluation))
    print("check:", collapse_gate(evaluation, config).description)
    if args.samples:
        print(samples_markdown(evaluation, args.samples))


if __name__ == "__main__":
    main()
