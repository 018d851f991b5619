"""Run a whole sweep: the data assets once, the variants N at a time, then the champion.

``run_sweep`` is what ``gpt-pipeline sweep`` and the ``weekly_sweep`` schedule's job call. Every
step is a ``gpt-pipeline materialize`` in a process of its own, recorded in the same Dagster
instance (``$DAGSTER_HOME``) and MLflow store:

1. ``raw_stories``, ``bpe_tokenizer``, ``tokenized_dataset`` (one run: one materialization each);
2. ``trained_model`` and ``sample_generations`` of each variant (one run per partition), at
   most ``parallel`` at once, each training with the cores divided by ``parallel``
   (``$GPT_PIPELINE_TRAININGS_AT_ONCE``) and the pool ``training`` raised to ``parallel`` for the
   sweep's duration (then set back);
3. ``champion_model``, even when some variants failed: it elects among those that succeeded.

A variant that fails (its model does not beat the unigram baseline, say) fails alone: its line
in the ranking says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.champion import standings
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.defs.sweeps import SWEEP_ENV, SHARED_ASSETS, Sweep, load_sweep
from gpt_pipeline.devices import TRAININGS_AT_ONCE_ENV
from gpt_pipeline.training.metrics import figure_text

VARIANT_STEP = "trained_model,sample_generations"


@dataclass
class StepResult:
    name: str
    returncode: int
    seconds: float
    last_line: str


def _materialize(args: list[str], env: dict[str, str], name: str, log: Callable[[str], None]) -> StepResult:
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-m", "gpt_pipeline", "materialize", *args], env=env,
                             capture_output=True, text=True)
    seconds = time.monotonic() - started
    lines = [line for line in (process.stderr + process.stdout).splitlines() if line.strip()]
    errors = [line for line in process.stderr.splitlines() if line.startswith("gpt-pipeline")]
    last = (errors or lines or [""])[-1].strip()
    log(f"{name}: {'done' if process.returncode == 0 else 'FAILED'} in {seconds:.1f} s"
        + ("" if process.returncode == 0 else f": {last}"))
    return StepResult(name, process.returncode, seconds, last)


class _PoolLimit:
    """The pool ``training`` at ``limit`` slots for the ``with`` block (at least what it was)."""

    def __init__(self, instance: dg.DagsterInstance, limit: int):
        self.storage, self.limit = instance.event_log_storage, limit

    def __enter__(self):
        info = self.storage.get_concurrency_info(TRAINING_POOL)
        self.previous = None if info.using_default_limit else info.slot_count
        if info.limit is not None and info.limit < self.limit:
            self.storage.set_concurrency_slots(TRAINING_POOL, self.limit)
            self.changed = True
        else:
            self.changed = False
        return self

    def __exit__(self, *exc):
        if self.changed:
            if self.previous is None:
                self.storage.delete_concurrency_limit(TRAINING_POOL)
            else:
                self.storage.set_concurrency_slots(TRAINING_POOL, self.previous)


def run_sweep(
    sweep_file: str | os.PathLike,
    base_config: str | os.PathLike | None = None,
    parallel: int = 1,
    storage_url: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict[str, float]]:
    """Run the sweep in ``sweep_file`` (see the module docstring); return the champion's
    standings (``defs.champion.standings``) and the wall time of each stage in seconds.

    Needs ``$DAGSTER_HOME`` (the instance every step records in)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    if not os.environ.get("DAGSTER_HOME"):
        raise ValueError("a sweep needs a Dagster instance its processes share: set DAGSTER_HOME")
    sweep: Sweep = load_sweep(sweep_file)  # a bad file is refused before anything runs
    if base_config is not None and not Path(base_config).is_file():
        raise FileNotFoundError(f"run config {str(base_config)!r} does not exist")
    env = {**os.environ, SWEEP_ENV: str(Path(sweep_file).resolve()), TRAININGS_AT_ONCE_ENV: str(parallel)}
    common = [*(["--config", str(base_config)] if base_config else []),
              *(["--storage-url", storage_url] if storage_url else []), "--quiet"]
    times: dict[str, float] = {}
    started = time.monotonic()
    log(f"sweep {sweep.name}: {len(sweep.variants)} variants, {parallel} at a time")
    data = _materialize(["--select", ",".join(SHARED_ASSETS), *common], env, "data assets", log)
    times["data"] = data.seconds
    if data.returncode != 0:
        raise RuntimeError(f"sweep {sweep.name}: the data assets failed: {data.last_line}")
    instance = dg.DagsterInstance.get()
    variants_started = time.monotonic()
    with _PoolLimit(instance, parallel), ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(
            lambda variant: _materialize(["--select", VARIANT_STEP, "--partition", variant, *common], env,
                                         f"variant {variant}", log),
            sweep.variants))
    times["variants"] = time.monotonic() - variants_started
    champion = _materialize(["--select", "champion_model", *common], env, "champion_model", log)
    times["champion"] = champion.seconds
    times["total"] = time.monotonic() - started
    dataset = instance.get_latest_materialization_event(dg.AssetKey("tokenized_dataset"))
    digest = dataset.asset_materialization.metadata["content_digest"].value if dataset else None
    rows = standings(instance, sweep, digest)
    failed = {r.name.removeprefix("variant "): r.last_line for r in results if r.returncode != 0}
    for row in rows:
        if row["variant"] in failed and row["rank"] is None and not row["note"].startswith("failed"):
            row["note"] = f"failed: {failed[row['variant']]}"
    if champion.returncode != 0:
        log(f"champion_model failed: {champion.last_line}")
    return rows, times


def ranking_table(rows: list[dict]) -> str:
    """The standings as a text table: rank, variant, bits per character, test loss, tokens/s,
    training seconds, overrides or why a variant has no rank."""
    header = ["rank", "variant", "test_bpc", "test_loss", "tokens/s", "train_s", "overrides / note"]
    body = []
    for row in rows:
        def number(key):
            return figure_text(key, row.get(key)) if row["rank"] else "-"
        body.append([str(row["rank"] or "-"), row["variant"], number("test_bits_per_character"),
                     number("test_loss"), number("tokens_per_second"),
                     number("training_seconds"), row["note"] or row["overrides"]])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [header, *body])

