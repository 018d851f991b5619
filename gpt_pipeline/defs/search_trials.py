"""A search trial's side of pruning, in the process that trains it.

``trial_reporter(variant)`` is None for a variant that is not a search trial; for a trial, a plain
callable for ``run_training(on_evaluation=...)``: it reports the evaluation's test bits per
character to the trial's Optuna study (``variant.trial``: study, number, storage, pruner) as the
intermediate value at that step, and raises the core's ``StopTraining`` when the pruner says the
trial is losing. The core loop knows nothing of Optuna or Dagster.
"""

from __future__ import annotations

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
        if evaluation.step in trial.storage.get_trial(trial._trial_id).intermediate_values:
            return  # reported before this resumption
        trial.report(float(value), evaluation.step)
        if trial.should_prune():
            raise StopTraining(f"pruned at step {evaluation.step}")

    return report
