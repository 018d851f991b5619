"""Training memory against corpus size: the token arrays are memory-mapped, not loaded.

For each size, a tokenized dataset of random stories (uniform 200-800 tokens, vocabulary 2048)
is written with ``gpt_pipeline.data.dataset_files.DatasetWriter`` (no text, no tokenizer), then a
fresh process does what the ``trained_model`` asset does with the data: ``load_splits`` (memory
maps), ``checkpoint_dir``'s hash of the data, ``train`` (which validates the data: one pass over
every token), ``unigram_loss``, with a small model on CPU for a few steps. A thread samples
``/proc/self/status`` every 2 ms; the script prints, per size, the process's anonymous memory
(``RssAnon``: heap, NumPy and torch arrays) and resident file pages (``RssFile``: the mapped
dataset, which the kernel may drop and read again) before the data is opened and at their peaks.

    .venv/bin/python benchmarks/bench_train_memory.py [--megabytes 20 200] [--steps 20]

Anonymous memory should stay flat while the data grows tenfold; resident file pages grow with
the data that was read (reclaimable page cache mapped into the process, not memory it needs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VOCAB = 2048


def status() -> dict[str, int]:
    """RssAnon, RssFile and VmRSS of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return values


class PeakSampler(threading.Thread):
    """Samples ``status()`` until stopped and keeps each figure's peak."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, status(), threading.Event()
        self.phases: dict[str, int] = {}
        self._phase_start = self.peak["RssAnon"]

    def run(self) -> None:
        while not self._done.is_set():
            for key, value in status().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def phase(self, name: str) -> None:
        """Close a phase: remember its peak RssAnon growth, and start the next from now."""
        now = status()
        self.phases[name] = max(self.peak["RssAnon"], now["RssAnon"]) - self._phase_start
        self._phase_start = now["RssAnon"]

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        for key, value in status().items():
            self.peak[key] = max(self.peak[key], value)
        return self.peak


def write_dataset(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A tokenized dataset of about ``megabytes`` MB of uint16 tokens, written in batches."""
    from gpt_pipeline.data.dataset_files import DatasetWriter

    rng = np.random.default_rng(seed)
    total = int(megabytes * 1e6 / 2)  # tokens
    lengths = rng.integers(200, 801, size=total // 500 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), total)) + 1]
    with DatasetWriter(path, len(lengths), VOCAB, 0.9) as writer:
        for start in range(0, len(lengths), 10_000):
            part = lengths[start : start + 10_000]
            offsets = np.concatenate([[0], np.cumsum(part)])
            writer.write(rng.integers(0, VOCAB, size=int(offsets[-1]), dtype=np.uint16), offsets)
    return path


def measure(path: Path, steps: int, fingerprint: bool = True) -> dict:
    """In this process: what ``trained_model`` does with the dataset at ``path``, and memory.

    ``fingerprint=False`` skips ``checkpoint_dir`` (and importing Dagster and MLflow for it)."""
    import torch

    from gpt_pipeline import quality
    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.data.table_file import TableFile
    from gpt_pipeline.training.loop import TrainConfig, train

    torch.set_num_threads(1)
    model = GPTConfig(vocab_size=VOCAB, embedding_size=32, context_length=64, head_count=2, block_count=1)
    config = TrainConfig(training_iterations=steps, evaluation_interval=steps, evaluation_iterations=2,
                         contexts_per_batch=16, device="cpu")
    before = status()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    train_data, test_data = load_splits(TableFile.stored_at(path))
    sampler.phase("load_splits")
    if fingerprint:
        from gpt_pipeline.defs.training_run import checkpoint_dir

        checkpoint_dir(model, config, train_data, test_data)
        sampler.phase("checkpoint_dir")
    result = train(model, config, train_data, test_data)
    sampler.phase("train")
    baseline = quality.unigram_loss(train_data, test_data, VOCAB)
    sampler.phase("unigram_loss")
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    return {
        "data_bytes": int(train_data.tokens.nbytes + test_data.tokens.nbytes),
        "memory_mapped": isinstance(train_data.tokens, np.memmap),
        "before": before,
        "peak": peak,
        "anon_growth": peak["RssAnon"] - before["RssAnon"],
        "phase_anon_growth": sampler.phases,
        "steps": result.steps,
        "test_loss": result.test_loss,
        "unigram_loss": baseline,
        "seconds": seconds,
    }


def run_size(megabytes: float, steps: int, directory: Path, fingerprint: bool = True) -> dict:
    """Write a dataset of ``megabytes`` and measure training on it in a fresh process."""
    path = write_dataset(directory / f"tokenized_{megabytes:g}mb.parquet", megabytes)
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from bench_train_memory import measure; "
            f"print(json.dumps(measure(__import__('pathlib').Path({str(path)!r}), {steps}, {fingerprint})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, nargs="+", default=[20.0, 200.0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    mb = 1e6
    print(f"{'data MB':>8} {'mapped':>6} {'anon before':>11} {'anon peak':>9} {'anon growth':>11} "
          f"{'file peak':>9} {'RSS peak':>8} {'seconds':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.megabytes:
            r = run_size(size, args.steps, Path(tmp))
            print(f"{r['data_bytes'] / mb:8.1f} {str(r['memory_mapped']):>6} {r['before']['RssAnon'] / mb:11.1f} "
                  f"{r['peak']['RssAnon'] / mb:9.1f} {r['anon_growth'] / mb:11.1f} {r['peak']['RssFile'] / mb:9.1f} "
                  f"{r['peak']['VmRSS'] / mb:8.1f} {r['seconds']:7.1f}", flush=True)
            phases = ", ".join(f"{k} {v / mb:.1f}" for k, v in r["phase_anon_growth"].items())
            print(f"{'':8} peak RssAnon growth by phase (MB): {phases}", flush=True)
    print("MB = 10^6 bytes; anon = RssAnon (heap, arrays), file = RssFile (mapped file pages).")


if __name__ == "__main__":
    main()
