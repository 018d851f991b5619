"""Schedules and sensors: retrain weekly, sweep learning rates, retrain when the source changes.

All three are stopped by default; turn them on in the Dagster UI (Automation) or with
``dagster schedule start`` / ``dagster sensor start``. Their run config is built from the asset
config classes (so their defaults are the assets' defaults), overridden by the YAML run config
in ``$GPT_PIPELINE_SCHEDULE_CONFIG`` when set. Environment variables, read when the code
location loads:

    GPT_PIPELINE_RETRAIN_CRON        weekly_retrain's cron (default "0 3 * * 0": Sundays 03:00)
    GPT_PIPELINE_SWEEP_CRON          learning_rate_sweep's cron (default "0 4 * * 6")
    GPT_PIPELINE_SWEEP_LEARNING_RATES  comma-separated rates (default "0.0005,0.001,0.002")
    GPT_PIPELINE_SOURCE_PARQUET      the Parquet file raw_source_sensor watches (default: the
                                     raw_stories path of the schedule config, if any)
"""

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._check import CheckError
import yaml

from gpt_pipeline.defs.configs import (
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TokenizerConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.jobs import train_gpt_job

DEFAULT_RETRAIN_CRON = "0 3 * * 0"
DEFAULT_SWEEP_CRON = "0 4 * * 6"
DEFAULT_SWEEP_LEARNING_RATES = (0.0005, 0.001, 0.002)
ASSET_CONFIGS = {
    "raw_stories": RawStoriesConfig,
    "bpe_tokenizer": TokenizerConfig,
    "tokenized_dataset": TokenizedDatasetConfig,
    "trained_model": TrainedModelConfig,
    "sample_generations": SampleGenerationsConfig,
}


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def scheduled_run_config(config_file: str | None = None) -> dict[str, Any]:
    """Every asset's config at its class defaults, overridden by a YAML run config file
    (``config_file`` or ``$GPT_PIPELINE_SCHEDULE_CONFIG``)."""
    run_config = {"ops": {name: {"config": cls().model_dump()} for name, cls in ASSET_CONFIGS.items()}}
    path = config_file or os.environ.get("GPT_PIPELINE_SCHEDULE_CONFIG")
    if path:
        run_config = _merge(run_config, yaml.safe_load(Path(path).read_text()) or {})
    return run_config


def sweep_learning_rates() -> tuple[float, ...]:
    raw = os.environ.get("GPT_PIPELINE_SWEEP_LEARNING_RATES")
    if not raw:
        return DEFAULT_SWEEP_LEARNING_RATES
    return tuple(float(part) for part in raw.split(",") if part.strip())


def sweep_run_requests(run_key_prefix: str, learning_rates: tuple[float, ...]) -> list[dg.RunRequest]:
    """One ``train_gpt_job`` run per learning rate, each tagged with the sweep and its rate."""
    base = scheduled_run_config()
    return [
        dg.RunRequest(
            run_key=f"{run_key_prefix}-lr={rate}",
            run_config=_merge(base, {"ops": {"trained_model": {"config": {"learning_rate": rate}}}}),
            tags={"gpt_pipeline/sweep": run_key_prefix, "gpt_pipeline/learning_rate": str(rate)},
        )
        for rate in learning_rates
    ]


def _tick(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's scheduled time, for run keys ("manual" when evaluated by hand: a context built
    without ``scheduled_execution_time``, whose property then raises ``CheckError``)."""
    try:
        scheduled = context.scheduled_execution_time
    except CheckError:
        return "manual"
    return scheduled.isoformat() if scheduled else "manual"


@dg.schedule(
    name="weekly_retrain",
    job=train_gpt_job,
    cron_schedule=os.environ.get("GPT_PIPELINE_RETRAIN_CRON", DEFAULT_RETRAIN_CRON),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain the whole lineage on a schedule (weekly by default).",
)
def weekly_retrain(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"weekly-{_tick(context)}", run_config=scheduled_run_config(), tags={"gpt_pipeline/schedule": "weekly"}
    )


@dg.schedule(
    name="learning_rate_sweep",
    job=train_gpt_job,
    cron_schedule=os.environ.get("GPT_PIPELINE_SWEEP_CRON", DEFAULT_SWEEP_CRON),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Launch one training per learning rate (each its own MLflow run) to compare them.",
)
def learning_rate_sweep(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return sweep_run_requests(f"sweep-{_tick(context)}", sweep_learning_rates())


def watched_source() -> str | None:
    return os.environ.get("GPT_PIPELINE_SOURCE_PARQUET") or scheduled_run_config()["ops"]["raw_stories"]["config"].get("path")


def file_state(path: Path, previous: dict | None) -> dict:
    """Size, modification time and SHA-256 of ``path``; the hash is reused from ``previous``
    when size and modification time are unchanged (no need to read a large file again)."""
    stat = path.stat()
    if previous and previous.get("size") == stat.st_size and previous.get("mtime_ns") == stat.st_mtime_ns:
        return dict(previous)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


@dg.sensor(
    name="raw_source_sensor",
    job=train_gpt_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Retrain when the raw Parquet source changes (size, modification time, content hash).",
)
def raw_source_sensor(context: dg.SensorEvaluationContext):
    source = watched_source()
    if not source:
        return dg.SkipReason("no source to watch: set GPT_PIPELINE_SOURCE_PARQUET or raw_stories.path")
    path = Path(source)
    if not path.is_file():
        return dg.SkipReason(f"source {source} does not exist")
    previous = json.loads(context.cursor) if context.cursor else None
    state = file_state(path, previous)
    if previous and state["sha256"] == previous.get("sha256"):
        context.update_cursor(json.dumps(state))
        return dg.SkipReason(f"source {source} unchanged")
    context.update_cursor(json.dumps(state))
    run_config = _merge(scheduled_run_config(), {"ops": {"raw_stories": {"config": {"path": str(path)}}}})
    return dg.RunRequest(
        run_key=f"{state['sha256']}-{state['size']}-{state['mtime_ns']}",
        run_config=run_config,
        tags={"gpt_pipeline/source_sha256": state["sha256"]},
    )


SCHEDULES = [weekly_retrain, learning_rate_sweep]
SENSORS = [raw_source_sensor]
