"""A search trial's side of pruning, in the process that trains it.

``trial_reporter(variant)`` is None for a variant that is not a search trial; for a trial, a plain
callable for ``run_training(on_evaluation=...)``: it reports the evaluation's test bits per
character to the trial's Optuna study (``variant.trial``: study, number, storage, pruner) as the
intermediate value at that step, and raises the core's ``StopTraining`` when the pruner says the
trial is losing. The core loop knows nothing of Optuna or Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gpt_pipeline.defs.search_space import default_storage, make_pruner
from gpt_pipeline.defs.variants import Variant
from gpt_pipeline.training.loop import Evaluation, StopTraining


def open_study(name: str, storage: str, pruner: dict | None = None, sampler=None):
    """The Optuna study ``name`` at ``storage`` (created when missing), minimizing; ``ValueError``
    (one line naming the database) when the database cannot be opened."""
    import optuna

    from gpt_pipeline.tracking.tracker import redacted, sqlite_path

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if sqlite_path(storage) is not None:  # a new SQLite file: its folder first
            sqlite_path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize",
                                   sampler=sampler, pruner=make_pruner(pruner or {"kind": "none"}))
    except Exception as error:  # noqa: BLE001 - any storage failure becomes one line naming the database
        first = (str(error).splitlines() or [""])[0][:200]
        raise ValueError(f"study database {redacted(storage)!r} cannot be opened: {type(error).__name__}: "
                         f"{first}") from None


class Claims:
    """Who runs each trial of a study, in the study's own database: one row per claim (trial id,
    claim number, owner as JSON); the row with the highest number names the owner. Claiming is
    inserting the next number: the primary key lets exactly one of two processes win (the other's
    INSERT fails), on SQLite as on PostgreSQL, where reading an owner and then writing one would
    let both win."""

    TABLE = "gpt_pipeline_trial_claims"

    def __init__(self, storage: str):
        import sqlalchemy as sa

        self.sa, self.engine = sa, sa.create_engine(storage)
        with self.engine.begin() as connection:
            connection.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (trial_id INTEGER NOT NULL, "
                                       "claim INTEGER NOT NULL, owner TEXT NOT NULL, PRIMARY KEY (trial_id, claim))"))

    def current(self, trial_id: int) -> tuple[int, dict] | None:
        """``(claim number, owner)`` of the trial's latest claim, None when it has none."""
        with self.engine.connect() as connection:
            row = connection.execute(self.sa.text(
                f"SELECT claim, owner FROM {self.TABLE} WHERE trial_id = :t ORDER BY claim DESC LIMIT 1"),
                {"t": trial_id}).first()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def take(self, trial_id: int, claim: int, owner: dict) -> bool:
        """Record claim number ``claim`` of the trial for ``owner``; False when another process
        recorded that number first (it won)."""
        try:
            with self.engine.begin() as connection:
                connection.execute(self.sa.text(f"INSERT INTO {self.TABLE} (trial_id, claim, owner) VALUES (:t, :c, :o)"),
                                   {"t": trial_id, "c": claim, "o": json.dumps(owner, sort_keys=True)})
        except self.sa.exc.IntegrityError:
            return False
        return True


def _process_cpu() -> float:
    """CPU seconds of this process (a trial's run has one of its own) and its children."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def frozen_trial(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def trial_reporter(variant: Variant) -> Callable[[Evaluation], None] | None:
    """The pruning hook of a search trial's training (see the module docstring), or None."""
    if not variant.trial:
        return None
    state: dict = {}

    def report(evaluation: Evaluation) -> None:
        import optuna

        value = evaluation.test_bits_per_character
        if value is None:
            return
        if "trial" not in state:
            study = open_study(variant.trial["study"], variant.trial.get("storage") or default_storage(),
                               variant.trial.get("pruner"))
            # a Trial of an existing (running) trial number: its reports go to the study's database
            state["trial"] = optuna.trial.Trial(study, frozen_trial(study, variant.trial["number"])._trial_id)
        trial = state["trial"]
        if "cpu_before" not in state:  # a resumed trial adds this run's CPU time to its earlier runs'
            state["cpu_before"] = float(frozen_trial(trial.study, variant.trial["number"]).user_attrs.get("cpu_seconds", 0.0))
        trial.set_user_attr("cpu_seconds", state["cpu_before"] + _process_cpu())  # the search's budget counts it
        if evaluation.step in trial.storage.get_trial(trial._trial_id).intermediate_values:
            return  # reported before this resumption
        trial.report(float(value), evaluation.step)
        if trial.should_prune():
            raise StopTraining(f"pruned at step {evaluation.step}")

    return report
