"""Retraining: weekly by schedule, and on new data by declarative automation.

Both are stopped by default; turn them on in the Dagster UI (Automation) or with
``dagster schedule start`` / ``dagster sensor start``.

- ``weekly_sweep`` (``$GPT_PIPELINE_RETRAIN_CRON``, default ``"0 3 * * 0"``: Sundays 03:00)
  launches ``sweep_job``, which checks a sweep file (its config ``sweep_file``, by default
  ``configs/sweep.yaml``) and submits it, as ``gpt-pipeline sweep`` does; ``sweep_sensor``
  (``defs.sweep_sensor``, running by default) turns it into queued runs: the data assets once,
  every variant and search trial, then ``champion_model``. From the UI's Launchpad,
  ``sweep_job`` submits any sweep file given as its config.
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


@dg.op(description="Check a sweep file and submit it: sweep_sensor turns it into queued runs (the data assets, "
       "every variant and search trial, then champion_model).")
def submit_sweep_file(context: dg.OpExecutionContext, config: SweepJobConfig) -> None:
    from gpt_pipeline.defs.sweep_submissions import check_sweep, submit
    from gpt_pipeline.storage import project_root

    path = Path(config.sweep_file)
    path = path if path.is_absolute() else project_root() / path
    try:
        _, content, user = check_sweep(path)  # a bad file: refused in a line, nothing submitted
    except (ValueError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error).splitlines()[0], allow_retries=False) from error
    submission = submit(context.instance, content, user)
    context.log.info(f"sweep {content['name']} submitted as {submission.id}: its runs are tagged "
                     f"gpt_pipeline/submission={submission.id}")


@dg.job(description="Submit a sweep file (config: sweep_file): sweep_sensor queues the data assets, every "
        "variant and search trial (each its own run and partition), then champion_model. What "
        "`gpt-pipeline sweep` submits.")
def sweep_job():
    submit_sweep_file()


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
