"""Retraining: weekly by schedule, and on new data by declarative automation.

Both are stopped by default; turn them on in the Dagster UI (Automation) or with
``dagster schedule start`` / ``dagster sensor start``.

- ``weekly_sweep`` (``$GPT_PIPELINE_RETRAIN_CRON``, default ``"0 3 * * 0"``: Sundays 03:00)
  launches ``sweep_job``, which runs a sweep file (its config ``sweep_file``, by default
  ``configs/sweep.yaml``) as ``gpt-pipeline sweep`` does (``defs.sweep_runner``): the data
  assets once, every variant and search trial, then ``champion_model``. From the UI's
  Launchpad, ``sweep_job`` runs any sweep file given as its config.
- ``retrain_on_new_data``, the sensor of declarative automation: ``stories_source`` is observed
  every five minutes (its data version is the file's content hash, ``defs.sources``); when it
  changes, every asset's ``AutomationCondition.eager()`` requests the lineage below it, each
  variant partition (its model, generations and evaluation) and the champion included. A touch
  that changes no byte requests nothing.

No run config is written here: a variant's config is bound to its partition (``defs.sweeps``).
"""


import os
from pathlib import Path

import dagster as dg
import pydantic


DEFAULT_RETRAIN_CRON = "0 3 * * 0"


class SweepJobConfig(dg.Config):
    sweep_file: str = pydantic.Field(
        default="configs/sweep.yaml",
        description="The sweep file (variants and/or a search space), relative to the project root or absolute.")
    parallel: int = pydantic.Field(default=1, ge=1, description="Variants trained at once (the cores are divided among them).")


@dg.op(description="Run a sweep file: data assets once, every variant and search trial (each a run of its "
       "own partition), then champion_model.")
def run_sweep_file(context: dg.OpExecutionContext, config: SweepJobConfig) -> None:
    from gpt_pipeline.defs.materialize import JOB
    from gpt_pipeline.defs.sweep_runner import ranking_table, run_sweep
    from gpt_pipeline.storage import project_root

    path = Path(config.sweep_file)
    path = path if path.is_absolute() else project_root() / path
    try:
        rows, times = run_sweep(path, parallel=config.parallel, log=context.log.info,
                                train_job=lambda: _train_job(context, JOB))
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error).splitlines()[0], allow_retries=False) from error
    context.log.info(f"sweep done in {times['total']:.0f} s; ranking:\n" + ranking_table(rows))


def _train_job(context: dg.OpExecutionContext, name: str) -> dg.JobDefinition:
    """The code location's job ``name`` (what the sweep's runs run); only a run launched from the
    code location (UI, schedule, daemon) has one."""
    try:
        return context.repository_def.get_job(name)
    except Exception:  # noqa: BLE001 - Dagster's invariant error: no repository on this context
        raise RuntimeError("sweep_job runs from its code location (the UI, a schedule or the daemon), "
                           "not from a bare execute_in_process") from None


@dg.job(description="Run a sweep file (config: sweep_file, parallel): the data assets once, every variant "
        "and search trial (each its own run and partition), then champion_model. What `gpt-pipeline sweep` does.")
def sweep_job():
    run_sweep_file()


def _tick(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's scheduled time, for run keys ("manual" when evaluated by hand: a context built
    without ``scheduled_execution_time``, whose property then raises Dagster's internal error)."""
    try:
        scheduled = context.scheduled_execution_time
    except Exception:  # dagster._check.CheckError, not public API
        return "manual"
    return scheduled.isoformat() if scheduled else "manual"


@dg.schedule(
    name="weekly_sweep",
    job=sweep_job,
    cron_schedule=os.environ.get("GPT_PIPELINE_RETRAIN_CRON", DEFAULT_RETRAIN_CRON),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain every variant of the sweep and elect the champion, weekly by default.",
)
def weekly_sweep(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"weekly-{_tick(context)}", tags={"gpt_pipeline/schedule": "weekly"})


retrain_on_new_data = dg.AutomationConditionSensorDefinition(
    "retrain_on_new_data",
    target=dg.AssetSelection.groups("gpt") | dg.AssetSelection.assets("stories_source"),  # the source observed too
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description="Declarative automation of the lineage: observes stories_source every five minutes "
    "and re-materializes what its change of content makes stale (variants, then the champion).",
)

SCHEDULES = [weekly_sweep]
SENSORS = [retrain_on_new_data]
JOBS = [sweep_job]
