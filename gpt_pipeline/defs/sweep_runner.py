"""Run a whole sweep: the data assets once, the variants and search trials, then the champion.

``run_sweep`` is what ``gpt-pipeline sweep`` and the job ``sweep_job`` call. Every step is a
Dagster run recorded in one Dagster instance (``$DAGSTER_HOME``, else the project's
``dagster_home/``, as ``make`` uses) and one MLflow store:

1. ``raw_stories``, ``bpe_tokenizer``, ``tokenized_dataset`` with the sweep's base as run config
   (one run: one materialization each);
2. each listed variant, recorded and added as a partition (``defs.variants``), then
   ``trained_model`` and ``sample_generations`` of it (one run per partition), at most
   ``parallel`` at once, and the pool ``training`` raised to ``parallel`` for the sweep's
   duration (then set back); after each, the standings of the sweep's variants so far;
3. the search's trials, if the file declares one (``defs.search``), the same way;
4. ``champion_model``, even when some variants failed: it elects among every variant of the
   instance (``defs.champion.standings``).

The data, the champion and, at ``parallel`` 1, every variant run in this process
(``defs.materialize``: Dagster, MLflow and torch imported once; a ``gpt-pipeline materialize``
process paid about 6 CPU seconds of imports per step). At ``parallel`` N > 1 each variant is a
``gpt-pipeline materialize`` process of its own, the cores divided among them
(``$GPT_PIPELINE_TRAININGS_AT_ONCE``). Ctrl-C or SIGTERM stops the sweep: those processes get
SIGTERM (their runs end FAILURE), a run in this process ends FAILURE, a search trial is released
for the next search to resume.

A variant that fails (its model does not beat the unigram baseline, say) fails alone: its line
in the ranking says why. Everything the file names is checked before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.champion import current_data_digest, standings
from gpt_pipeline.defs.local_instance import instance_home
from gpt_pipeline.defs.materialize import materialize_run, with_console
from gpt_pipeline.defs.search import Search, at_once
from gpt_pipeline.defs.search_trials import open_study
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.defs.sweeps import SHARED_ASSETS, Sweep, load_sweep, read_run_config, variant_record
from gpt_pipeline.defs.variants import DEFAULT_VARIANT, VariantError, read_variant, record_path, save_variant
from gpt_pipeline.devices import TRAININGS_AT_ONCE_ENV
from gpt_pipeline.storage import exclusive
from gpt_pipeline.training.metrics import figure_text

VARIANT_STEP = "trained_model,sample_generations,model_evaluation"  # evaluated before the election
CHAMPION_STEP = "champion_model,champion_evaluation"


@dataclass
class StepResult:
    name: str
    returncode: int
    seconds: float
    last_line: str


def _finished(name: str, seconds: float, failure: str | None, log: Callable[[str], None]) -> StepResult:
    log(f"{name}: {'done' if failure is None else 'FAILED'} in {seconds:.1f} s" + (f": {failure}" if failure else ""))
    return StepResult(name, 0 if failure is None else 1, seconds, failure or "")


def _in_process(instance: dg.DagsterInstance, job: dg.JobDefinition, run_config: dict, select: str,
                partition: str | None, name: str, log: Callable[[str], None]) -> StepResult:
    """A Dagster run in this process (``defs.materialize``): no imports paid again. Ctrl-C (or
    SIGTERM, made one by the command) ends the run FAILURE, then raises here."""
    started = time.monotonic()
    try:
        materialize_run(instance, job, run_config, select, partition, quiet=True, log=log)
    except (ValueError, RuntimeError) as error:
        return _finished(name, time.monotonic() - started, f"gpt-pipeline: error: {error}", log)
    return _finished(name, time.monotonic() - started, None, log)


class _Children:
    """The ``gpt-pipeline materialize`` processes of the variants trained at the same time; on
    Ctrl-C or SIGTERM, ``stop`` sends each SIGTERM (its Dagster run ends FAILURE) and waits."""

    GRACE = 20.0  # seconds a child has to end its run before it is killed

    def __init__(self):
        self.lock, self.running, self.stopping = threading.Lock(), set(), threading.Event()

    def run(self, args: list[str], env: dict[str, str], name: str, log: Callable[[str], None]) -> StepResult | None:
        """``gpt-pipeline materialize ARGS`` in a process of its own; None when it was stopped."""
        started = time.monotonic()
        with self.lock:
            if self.stopping.is_set():
                return None
            process = subprocess.Popen([sys.executable, "-m", "gpt_pipeline", "materialize", *args], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.running.add(process)
        try:
            stdout, stderr = process.communicate()
        finally:
            with self.lock:
                self.running.discard(process)
        if self.stopping.is_set():
            return None
        lines = [line for line in (stderr + stdout).splitlines() if line.strip()]
        errors = [line for line in stderr.splitlines() if line.startswith("gpt-pipeline")]
        last = (errors or lines or [""])[-1].strip()
        return _finished(name, time.monotonic() - started, None if process.returncode == 0 else last, log)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            children = list(self.running)
        for process in children:
            process.terminate()
        deadline = time.monotonic() + self.GRACE
        for process in children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


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
    *,
    train_job: Callable[[], dg.JobDefinition],
) -> tuple[list[dict], dict[str, float]]:
    """Run the sweep in ``sweep_file`` (see the module docstring); return the champion's
    standings (``defs.champion.standings``: every variant of the instance) and the wall time of
    each stage in seconds. ``train_job`` gives the job of every asset (``train_gpt_job``, storing
    at ``storage_url``) for the runs in this process: the caller's, as ``definitions`` imports
    this module's callers."""
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
    with exclusive(str(home)):  # a new home's SQLite storage is created once (see cli._materialize)
        instance = dg.DagsterInstance.from_config(str(home))
    # the sweep's base of the shared assets under the user's run config
    ops = {**{a: {"config": dict(v)} for a, v in sweep.base.items() if a in SHARED_ASSETS},
           **{a: v for a, v in (user.get("ops") or {}).items() if a in SHARED_ASSETS}}
    job = with_console(train_job())
    data = _in_process(instance, job, {**user, "ops": ops}, ",".join(SHARED_ASSETS), None, "data assets", log)
    times["data"] = data.seconds
    if data.returncode != 0:
        raise RuntimeError(f"sweep {sweep.name}: the data assets failed: {data.last_line}")
    for variant in sweep.variants:
        save_variant(instance, variant_record(sweep, variant))
    failed: dict[str, str] = {}
    children = _Children()
    ours: list[str] = list(sweep.variants)  # this sweep's variants and trials, for the live standings
    digest = current_data_digest(instance)

    def launch(variant: str) -> bool | None:
        """Train ``variant``; None when the sweep was stopped (Ctrl-C, SIGTERM) meanwhile."""
        if parallel == 1:  # in this process (Ctrl-C reaches the training at once)
            result = _in_process(instance, job, user, VARIANT_STEP, variant, f"variant {variant}", log)
        else:
            variant_args = ["--config", str(base_config)] if base_config else []
            result = children.run(["--select", VARIANT_STEP, "--partition", variant, *variant_args, *common], env,
                                  f"variant {variant}", log)
        if result is None:
            return None
        if result.returncode != 0:
            failed[variant] = result.last_line
        if variant not in ours:
            ours.append(variant)
        log(live_table(_noted(standings(instance, digest, ours), failed)))  # the live standings
        return result.returncode == 0

    variants_started = time.monotonic()
    try:
        with _PoolLimit(instance, parallel):
            at_once(launch, sweep.variants, parallel)
            if sweep.search is not None:
                Search(sweep, instance, log).run(launch, parallel)
    except BaseException:  # Ctrl-C or SIGTERM: the children's runs end, then this process
        children.stop()
        raise
    times["variants"] = time.monotonic() - variants_started
    champion = _in_process(instance, job, user, CHAMPION_STEP, None, "champion_model", log)
    times["champion"] = champion.seconds
    times["total"] = time.monotonic() - started
    rows = _noted(standings(instance, current_data_digest(instance)), failed)
    if champion.returncode != 0:
        log(f"champion_model failed: {champion.last_line}")
    return rows, times


def _noted(rows: list[dict], failed: dict[str, str]) -> list[dict]:
    """``rows`` with the failure line of each variant that failed in this sweep as its note."""
    for row in rows:
        if row["variant"] in failed and row["rank"] is None and not row["note"].startswith("failed"):
            row["note"] = f"failed: {failed[row['variant']]}"
    return rows


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
    return _text_table(header, body)


def live_table(rows: list[dict]) -> str:
    """The standings while a sweep runs: rank, variant, state (trained, pruned, failed, ...), the
    step its training stopped at and its last test bits per character."""
    body = []
    for row in rows:
        pruned = row["note"].startswith("pruned")
        state = "trained" if row["rank"] else "pruned" if pruned else row["note"].split(" (")[0].split(":")[0]
        step = row["pruned_at_step"] if pruned else row.get("steps")
        bpc = row.get("test_bits_per_character")
        body.append([str(row["rank"] or "-"), row["variant"], state, "-" if step is None else str(step),
                     "-" if bpc is None else figure_text("test_bits_per_character", bpc)])
    return _text_table(["rank", "variant", "state", "step", "test_bpc"], body)


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [header, *body])
