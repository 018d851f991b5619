"""A search with pruning against the same trials run to the end, in one run on one machine.

On the embedded corpus, a sweep file's ``search:`` is sampled by Optuna as ``gpt-pipeline sweep``
samples it (``defs.search_space``: the sampler, the space and the pruner built from the same
section), each trial trained by the core loop with the pipeline's pruning hook (test bits per
character reported at every evaluation, ``StopTraining`` when the pruner says stop). Then the
same trials (the parameters the search sampled, same seeds) are trained to the end, each right
after its search trial so that both see the same load of a shared machine. Printed:
the CPU model, each trial, the best test bits per character of both and their CPU seconds.
The targets: the pruned search's best within 2% of the full runs' best, at most 50% of their
CPU seconds.

    .venv/bin/python benchmarks/bench_search.py [--trials 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt_pipeline.data.config import DatasetConfig, StoriesConfig  # noqa: E402
from gpt_pipeline.data.dataset_files import load_splits, split_characters  # noqa: E402
from gpt_pipeline.data.encode_stories import write_dataset  # noqa: E402
from gpt_pipeline.data.story_files import write_stories  # noqa: E402
from gpt_pipeline.data.table_file import TableFile  # noqa: E402
from gpt_pipeline.defs.search_space import make_pruner, make_sampler, suggest  # noqa: E402
from gpt_pipeline.defs.sweeps import parse_sweep  # noqa: E402
from gpt_pipeline.defs.configs import TrainedModelConfig  # noqa: E402
from gpt_pipeline.model.gpt import GPTConfig  # noqa: E402
from gpt_pipeline.tokenizer.config import TokenizerConfig  # noqa: E402
from gpt_pipeline.training.config import TrainConfig  # noqa: E402
from gpt_pipeline.tokenizer.from_stories import train_tokenizer  # noqa: E402
from gpt_pipeline.training.loop import StopTraining, train  # noqa: E402

# A model a few times smaller than the quickstart's, evaluated often (the pruner's checkpoints).
BASE = {"embedding_size": 48, "context_length": 32, "head_count": 4, "block_count": 2, "training_iterations": 600,
        "evaluation_interval": 50, "evaluation_iterations": 4, "contexts_per_batch": 16, "seed": 11,
        "device": "cpu"}
SEARCH = {"n_trials": 12, "seed": 0, "sampler": "random",
          "pruner": {"kind": "median", "n_startup_trials": 3, "n_warmup_steps": 50},
          "space": {"trained_model.learning_rate": {"low": 0.0003, "high": 0.03, "log": True},
                    "trained_model.embedding_size": {"choices": [32, 48]}}}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def data(folder: Path):
    write_stories(folder / "stories.parquet", StoriesConfig(num_stories=2000, seed=0))
    tokenizer, _ = train_tokenizer(TableFile(folder / "stories.parquet"), TokenizerConfig(vocab_size=512))
    dataset, _ = write_dataset(tokenizer, TableFile(folder / "stories.parquet"), DatasetConfig(training_percentage=0.9),
                               folder / "dataset.parquet")
    train_data, test_data = load_splits(dataset)
    return tokenizer, train_data, test_data, split_characters(dataset)


def run_trial(values: dict, tokenizer, splits, characters, threads: int, report=None) -> tuple[float, int, float]:
    """(test bits per character at the end, steps done, CPU seconds) of one training."""
    config = TrainedModelConfig(**{**BASE, **values, "threads": threads})
    model_config = config.core(GPTConfig, vocab_size=tokenizer.vocab_size)
    train_config = dataclasses.replace(config.core(TrainConfig), resume=False)
    started = time.process_time()
    result = train(model_config, train_config, *splits, on_evaluation=report, characters=characters)
    return result.evaluations[-1].test_bits_per_character, result.steps, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    spec = parse_sweep({"name": "bench", "search": {**SEARCH, "n_trials": args.trials}}, "bench", Path(".")).search
    print(f"CPU: {cpu_model()}, {args.threads} thread(s), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, train_data, test_data, characters = data(Path(tmp))
        # untimed: the process's first training pays for warming up torch (a second or two)
        run_trial({"training_iterations": 20, "evaluation_interval": 10}, tokenizer, (train_data, test_data),
                  characters, args.threads)
        study = optuna.create_study(direction="minimize", sampler=make_sampler(spec), pruner=make_pruner(spec.pruner))
        sampled, full, pruned_cpu, full_cpu = [], [], 0.0, 0.0
        for _ in range(spec.n_trials):
            trial = study.ask()
            values = suggest(trial, spec)["trained_model"]

            def report(evaluation, trial=trial):  # what defs.search_trials reports
                trial.report(evaluation.test_bits_per_character, evaluation.step)
                if evaluation.step < BASE["training_iterations"] and trial.should_prune():
                    raise StopTraining(f"pruned at step {evaluation.step}")

            bpc, steps, cpu = run_trial(values, tokenizer, (train_data, test_data), characters, args.threads, report)
            pruned_cpu += cpu
            done = steps >= BASE["training_iterations"]
            study.tell(trial, bpc if done else None, state=None if done else optuna.trial.TrialState.PRUNED)
            sampled.append((values, bpc, steps, done))
            # the same trial to the end, right after (both see the same load of a shared machine)
            full_bpc, _, full_seconds = run_trial(values, tokenizer, (train_data, test_data), characters, args.threads)
            full_cpu += full_seconds
            full.append(full_bpc)
            print(f"trial {trial.number:2d} {values}: search {'done' if done else f'pruned at {steps}'}, "
                  f"test bpc {bpc:.4f}, {cpu:.1f} CPU s; to the end: test bpc {full_bpc:.4f}, "
                  f"{full_seconds:.1f} CPU s", flush=True)
    best_pruned = min(bpc for _, bpc, _, done in sampled if done)
    best_full = min(full)
    print(f"\npruned search: best test bpc {best_pruned:.4f}, {pruned_cpu:.0f} CPU s, "
          f"{sum(not done for *_, done in sampled)} of {len(sampled)} trials pruned")
    print(f"full runs:     best test bpc {best_full:.4f}, {full_cpu:.0f} CPU s")
    print(f"best within {100 * (best_pruned / best_full - 1):+.2f}% (target <= 2%), "
          f"CPU {100 * pruned_cpu / full_cpu:.0f}% of the full runs' (target <= 50%)")


if __name__ == "__main__":
    main()
