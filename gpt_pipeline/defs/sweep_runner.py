"""Run a whole sweep: the data assets once, the variants and search trials, then the champion.

``run_sweep`` is what ``gpt-pipeline sweep`` and the job ``sweep_job`` call. Every step is a
``gpt-pipeline materialize`` (a Dagster run) recorded in one Dagster instance (``$DAGSTER_HOME``,
else the project's ``dagster_home/``, as ``make`` uses) and one MLflow store:

1. ``raw_stories``, ``bpe_tokenizer``, ``tokenized_dataset`` with the sweep's base as run config
   (one run: one materialization each);
2. each listed variant, recorded and added as a partition (``defs.variants``), then
   ``trained_model`` and ``sample_generations`` of it (one run per partition), at most
   ``parallel`` at once, each in a process of its own with the cores divided among them (``$GPT_PIPELINE_TRAININGS_AT_ONCE``) and the pool ``training``
   raised to ``parallel`` for the sweep's duration (then set back);
3. the search's trials, if the file declares one (``defs.search``), the same way;
4. ``champion_model``, even when some variants failed: it elects among every variant of the
   instance (``defs.champion.standings``).

A variant that fails (its model does not beat the unigram baseline, say) fails alone: its line
in the ranking says why. Everything the file names is checked before anything runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

import tempfile

import yaml

from gpt_pipeline.defs.champion import current_data_digest, standings
from gpt_pipeline.defs.local_instance import instance_home
from gpt_pipeline.defs.search import Search
from gpt_pipeline.defs.search_trials import open_study
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.defs.sweeps import SHARED_ASSETS, Sweep, load_sweep, read_run_config, variant_record
from gpt_pipeline.defs.variants import DEFAULT_VARIANT, VariantError, read_variant, record_path, save_variant
from gpt_pipeline.devices import TRAININGS_AT_ONCE_ENV
from gpt_pipeline.training.metrics import figure_text

VARIANT_STEP = "trained_model,sample_generations,model_evaluation"  # evaluated before the election


@dataclass
class StepResult:
    name: str
    returncode: int
    seconds: float
    last_line: str


def _materialize(args: list[str], env: dict[str, str], name: str, log: Callable[[str], None]) -> StepResult:
    """``gpt-pipeline materialize ARGS`` in a process of its own (a Dagster run in the instance).
    Ctrl-C reaches it as it reaches this process; a search trial it interrupts stays running in
    its study, to resume from its checkpoint."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "gpt_pipeline", "materialize", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate()
    except BaseException:  # Ctrl-C (or SIGTERM's exception): the run ends as interrupted, then we do
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise
    seconds = time.monotonic() - started
    lines = [line for line in (stderr + stdout).splitlines() if line.strip()]
    errors = [line for line in stderr.splitlines() if line.startswith("gpt-pipeline")]
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


def _check_bindings(sweep: Sweep) -> None:
    """Refuse, before anything runs, a listed variant recorded before with another config."""
    for variant in sweep.variants:
        existing = read_variant(variant)
        wanted = variant_record(sweep, variant)
        if existing is not None and (existing.base, existing.overrides) != (wanted.base, wanted.overrides) and (
                variant != DEFAULT_VARIANT or record_path(variant).is_file()):
            raise VariantError(f"variant {variant!r} was trained with {existing.describe()} (sweep {existing.sweep}), "
                               f"not {wanted.describe()}: give the new configuration a name of its own")


def run_sweep(
    sweep_file: str | os.PathLike,
    base_config: str | os.PathLike | None = None,
    parallel: int = 1,
    storage_url: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict[str, float]]:
    """Run the sweep in ``sweep_file`` (see the module docstring); return the champion's
    standings (``defs.champion.standings``: every variant of the instance) and the wall time of
    each stage in seconds."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    sweep: Sweep = load_sweep(sweep_file)  # a bad file is refused before anything runs
    if base_config is not None and not Path(base_config).is_file():
        raise FileNotFoundError(f"run config {str(base_config)!r} does not exist")
    _check_bindings(sweep)
    if sweep.search is not None:  # a study database that cannot be opened: refused before anything runs
        open_study(sweep.name, sweep.search.storage_url())
    home = instance_home()
    env = {**os.environ, "DAGSTER_HOME": str(home), TRAININGS_AT_ONCE_ENV: str(parallel)}
    user = read_run_config(base_config) if base_config else {}
    common = [*(["--storage-url", storage_url] if storage_url else []), "--quiet"]
    times: dict[str, float] = {}
    started = time.monotonic()
    log(f"sweep {sweep.name}: {len(sweep.variants)} variants"
        + (f" and a search ({sweep.search.n_trials or 'until'} trials{' or ' + str(sweep.search.cpu_seconds) + ' CPU s' if sweep.search.cpu_seconds else ''})" if sweep.search else "")
        + f", {parallel} at a time (Dagster instance {home})")
    with tempfile.TemporaryDirectory() as tmp:
        data_config = Path(tmp) / "data.yaml"  # the sweep's base of the shared assets under the user's run config
        ops = {**{a: {"config": dict(v)} for a, v in sweep.base.items() if a in SHARED_ASSETS},
               **{a: v for a, v in (user.get("ops") or {}).items() if a in SHARED_ASSETS}}
        data_config.write_text(yaml.safe_dump({**user, "ops": ops}))
        variant_args = ["--config", str(base_config)] if base_config else []
        data = _materialize(["--select", ",".join(SHARED_ASSETS), "--config", str(data_config), *common],
                            env, "data assets", log)
        times["data"] = data.seconds
        if data.returncode != 0:
            raise RuntimeError(f"sweep {sweep.name}: the data assets failed: {data.last_line}")
        instance = dg.DagsterInstance.from_config(str(home))
        for variant in sweep.variants:
            save_variant(instance, variant_record(sweep, variant))
        failed: dict[str, str] = {}

        def launch(variant: str) -> bool:
            result = _materialize(["--select", VARIANT_STEP, "--partition", variant, *variant_args, *common], env,
                                  f"variant {variant}", log)
            if result.returncode != 0:
                failed[variant] = result.last_line
            return result.returncode == 0

        variants_started = time.monotonic()
        with _PoolLimit(instance, parallel):
            if parallel == 1:  # in this thread: Ctrl-C stops the training at once
                for variant in sweep.variants:
                    launch(variant)
            else:
                with ThreadPoolExecutor(max_workers=parallel) as pool:
                    list(pool.map(launch, sweep.variants))
            if sweep.search is not None:
                Search(sweep, instance, log).run(launch, parallel)
        times["variants"] = time.monotonic() - variants_started
        champion = _materialize(["--select", "champion_model", *variant_args, *common], env, "champion_model", log)
    times["champion"] = champion.seconds
    times["total"] = time.monotonic() - started
    rows = standings(instance, current_data_digest(instance))
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

