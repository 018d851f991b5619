"""A sweep's ``search:`` (``defs.search_space``): Optuna asks, Dagster trains, Optuna is told.

Each trial is a variant ``<sweep>-t<number>`` (its sampled overrides over the sweep's base),
recorded and added as a partition (``defs.variants``) when ``Search.claim`` asks for it, then
materialized by a queued run that ``sweep_sensor`` requests (``defs.sweep_sensor``: a Dagster
run of ``trained_model``, ``sample_generations`` and ``model_evaluation`` on that partition),
which tells the study how it ended (``Search.finish``). The run's training reports test bits per
character at every evaluation to the trial (``defs.search_trials``); when the pruner stops it, its materialization is marked ``pruned`` and
the study is told PRUNED; otherwise the study is told the final test bits per character.

The study lives in a database (``SearchSpec.storage_url``: SQLite under ``mlruns/`` by default,
PostgreSQL in a deployment), so the search accumulates: starting it again continues the study.
Finished trials count towards ``n_trials`` and are never retrained; a trial left RUNNING by a
process that is gone (killed mid-search) or given back by one that was stopped (Ctrl-C) is run
again first, under the same variant, and resumes from its checkpoint (the owner is the code
server process that evaluates the sensor, with the submission). Two searches on one study
never run the same trial: a new trial is asked of the study's database (its own row), and who runs
a trial is a claim row in that database (``search_trials.Claims``) that one process alone can
write, so of two searches that find the same orphan, one adopts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import dagster as dg

from gpt_pipeline.defs.search_space import make_sampler, suggest
from gpt_pipeline.defs.search_trials import Claims, frozen_trial, open_study
from gpt_pipeline.defs.sweeps import Sweep, variant_record
from gpt_pipeline.defs.variants import Variant, save_variant
from gpt_pipeline.tracking.tracker import _process_alive, _process_tags

OWNER_ATTR, VARIANT_ATTR, CPU_ATTR = "owner", "variant", "cpu_seconds"
RELEASED = "released"  # the owner of a trial given up by a search that was stopped


def trial_variant(sweep: Sweep, number: int) -> str:
    return f"{sweep.name[:56]}-t{number:03d}"


class Search:
    """One process's part in the search of ``sweep`` (see the module docstring)."""

    def __init__(self, sweep: Sweep, instance: dg.DagsterInstance, log: Callable[[str], None] = print,
                 owner: dict | None = None):
        import optuna

        self.optuna, self.sweep, self.spec, self.instance, self.log = optuna, sweep, sweep.search, instance, log
        self.study = open_study(sweep.name, self.spec.storage_url(), self.spec.pruner, make_sampler(self.spec))
        self.claims = Claims(self.spec.storage_url())
        self.lock = threading.Lock()
        self.owner = {**_process_tags(), **(owner or {})}  # the sensor adds its submission
        self.ran: list[int] = []

    def _trials(self, *states):
        return self.study.get_trials(deepcopy=False, states=states or None)

    def _orphan(self, skip: set[int]):
        """A RUNNING trial whose process is gone (killed mid-search) or that it released (stopped),
        claimed by this process: ``Claims.take`` lets one of the processes that see it win."""
        running = self.optuna.trial.TrialState.RUNNING
        for frozen in self._trials(running):
            if frozen.number in self.ran or frozen.number in skip or VARIANT_ATTR not in frozen.user_attrs:
                continue
            if self.adopt(frozen, only_orphan=True):
                return frozen.number, frozen.user_attrs[VARIANT_ATTR], self.optuna.trial.Trial(self.study, frozen._trial_id)
        return None

    def adopt(self, frozen, only_orphan: bool = False) -> bool:
        """Whether this process holds the claim of trial ``frozen``: it did already (unless
        ``only_orphan``), or took it as its owner is gone or released it. Of two processes that
        try at once, one wins (``Claims.take``)."""
        claim, owner = self.claims.current(frozen._trial_id) or (-1, frozen.user_attrs.get(OWNER_ATTR) or {})
        if owner == self.owner:
            return not only_orphan
        if not owner.get(RELEASED) and _process_alive(owner):
            return False
        if not self.claims.take(frozen._trial_id, claim + 1, self.owner):
            return False  # another process claimed it first
        self.optuna.trial.Trial(self.study, frozen._trial_id).set_user_attr(OWNER_ATTR, self.owner)
        return True

    def release(self, trial) -> None:
        """Give trial ``trial`` up (this process stops): the next search claims it at once and
        resumes it from its checkpoint."""
        current = self.claims.current(trial._trial_id)
        if current is not None and current[1] == self.owner:
            self.claims.take(trial._trial_id, current[0] + 1, {RELEASED: True})

    def _budget_left(self) -> bool:
        trials = self._trials()
        if self.spec.n_trials is not None and len(trials) >= self.spec.n_trials:
            return False
        spent = sum(float(t.user_attrs.get(CPU_ATTR, 0.0)) for t in trials)
        return self.spec.cpu_seconds is None or spent < self.spec.cpu_seconds

    def claim(self, skip: set[int] = frozenset()):
        """``(number, variant, trial)`` of the next trial to run (an orphan not in ``skip`` first),
        or None when the budget is spent."""
        with self.lock:
            orphan = self._orphan(skip)
            if orphan is not None:
                self.log(f"trial {orphan[0]} ({orphan[1]}): interrupted before, resumed from its checkpoint")
                return orphan
            if not self._budget_left():
                return None
            self.study.sampler = make_sampler(self.spec, len(self._trials()))
            trial = self.study.ask()  # a new trial: Optuna gives each asker its own
            self.claims.take(trial._trial_id, 0, self.owner)
            trial.set_user_attr(OWNER_ATTR, self.owner)  # before its variant: a trial with one has an owner
            overrides = suggest(trial, self.spec)
            variant = trial_variant(self.sweep, trial.number)
            record = variant_record(self.sweep, variant)
            merged = {a: {**record.overrides.get(a, {}), **v} for a, v in overrides.items()}
            save_variant(self.instance, Variant(
                variant, self.sweep.name, record.base, merged,
                {"study": self.sweep.name, "number": trial.number, "storage": self.spec.storage,
                 "pruner": self.spec.pruner}))
            trial.set_user_attr(VARIANT_ATTR, variant)
            return trial.number, variant, trial

    def finish(self, number: int, variant: str, trial, cpu_seconds: float | None, succeeded: bool) -> str:
        """Tell the study how trial ``number`` ended (from its materialization); return a line.
        ``cpu_seconds`` None: what the trial's run recorded itself (``search_trials.trial_reporter``)."""
        state = self.optuna.trial.TrialState
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("trained_model"), asset_partitions=[variant]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        bpc = meta.get("test_bits_per_character")
        with self.lock:
            if cpu_seconds is not None:
                trial.set_user_attr(CPU_ATTR, float(cpu_seconds))
            if meta.get("pruned") and meta["pruned"].value:  # its evaluation may fail: still pruned
                self.study.tell(number, state=state.PRUNED)
                return f"pruned at step {meta['pruned_at_step'].value}"
            if succeeded and bpc is not None:
                self.study.tell(number, float(bpc.value))
                return f"test bits per character {bpc.value:.4f}"
            self.study.tell(number, state=state.FAIL)
            return "failed"

    def best(self) -> str:
        """The study's standing in a line: trials finished, pruned, and the best so far."""
        state = self.optuna.trial.TrialState
        trials = self._trials()
        done = [t for t in trials if t.state == state.COMPLETE]
        pruned = sum(t.state == state.PRUNED for t in trials)
        if not done:
            return f"{len(trials)} trials, {pruned} pruned, none finished yet"
        top = min(done, key=lambda t: t.value)
        return (f"{len(done)} finished, {pruned} pruned; best {top.user_attrs.get(VARIANT_ATTR)} "
                f"test bits per character {top.value:.4f}")


def study_summary(sweep: Sweep) -> dict[str, int]:
    """How many trials of the study ended in each state (``COMPLETE``, ``PRUNED``, ...)."""
    study = open_study(sweep.name, sweep.search.storage_url())
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def frozen(sweep: Sweep, number: int):
    return frozen_trial(open_study(sweep.name, sweep.search.storage_url()), number)

