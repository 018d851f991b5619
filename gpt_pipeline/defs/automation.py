"""Retraining: weekly by schedule, and on new data by declarative automation.

Both are stopped by default; turn them on in the Dagster UI (Automation) or with
``dagster schedule start`` / ``dagster sensor start``.

- ``weekly_sweep`` (``$GPT_PIPELINE_RETRAIN_CRON``, default ``"0 3 * * 0"``: Sundays 03:00)
  launches ``sweep_job``, which runs the code location's sweep as ``gpt-pipeline sweep`` does
  (``defs.sweep_runner``): the data assets once, every variant, then ``champion_model``.
- ``retrain_on_new_data``, the sensor of declarative automation: ``stories_source`` is observed
  every five minutes (its data version is the file's content hash, ``defs.sources``); when it
  changes, every asset's ``AutomationCondition.eager()`` requests the lineage below it, each
  variant partition and the champion included. A touch that changes no byte requests nothing.

No run config is written here: a variant's config is bound to its partition (``defs.sweeps``).
"""


import os

import dagster as dg
import pydantic
from dagster._check import CheckError

from gpt_pipeline.defs.sweeps import SWEEP

DEFAULT_RETRAIN_CRON = "0 3 * * 0"


class SweepJobConfig(dg.Config):
    parallel: int = pydantic.Field(default=1, ge=1, description="Variants trained at once (the cores are divided among them).")


@dg.op(description="Run the code location's sweep: data assets once, every variant, then champion_model.")
def run_code_location_sweep(context: dg.OpExecutionContext, config: SweepJobConfig) -> None:
    from gpt_pipeline.defs.sweep_runner import ranking_table, run_sweep

    if SWEEP.path is None:  # the default sweep: one variant, nothing to compare
        raise dg.Failure(description="no sweep file: start the code location with $GPT_PIPELINE_SWEEP "
                         "naming one (configs/sweep.yaml is an example)", allow_retries=False)
    try:
        rows, times = run_sweep(SWEEP.path, parallel=config.parallel, log=context.log.info)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error).splitlines()[0], allow_retries=False) from error
    context.log.info(f"sweep done in {times['total']:.0f} s; ranking:\n" + ranking_table(rows))


@dg.job(description="Retrain the sweep of $GPT_PIPELINE_SWEEP: the data assets once, every variant "
        "(each its own run), then champion_model. What `gpt-pipeline sweep` does, as a Dagster run.")
def sweep_job():
    run_code_location_sweep()


def _tick(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's scheduled time, for run keys ("manual" when evaluated by hand: a context built
    without ``scheduled_execution_time``, whose property then raises ``CheckError``)."""
    try:
        scheduled = context.scheduled_execution_time
    except CheckError:
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
    return dg.RunRequest(run_key=f"weekly-{_tick(context)}", tags={"gpt_pipeline/schedule": "weekly",
                                                                   "gpt_pipeline/sweep": SWEEP.name})


retrain_on_new_data = dg.AutomationConditionSensorDefinition(
    "retrain_on_new_data",
    target=dg.AssetSelection.groups("gpt", include_sources=True),  # stories_source observed by it too
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description="Declarative automation of the lineage: observes stories_source every five minutes "
    "and re-materializes what its change of content makes stale (variants, then the champion).",
)

SCHEDULES = [weekly_sweep]
SENSORS = [retrain_on_new_data]
JOBS = [sweep_job]
