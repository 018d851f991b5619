"""The Dagster code location: ``defs`` holds the lineage's assets, jobs, automation and resources.

``workspace.yaml`` (and ``dg dev`` / ``dagster dev -m gpt_pipeline.definitions``) load this
module. Nothing is read from the environment or a sweep file to decide what exists: the variants
of ``trained_model`` and ``sample_generations`` are the instance's dynamic partitions
(``gpt_pipeline.defs.variants``), added by sweeps, searches and ``gpt-pipeline materialize``.
"""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.automation import JOBS as AUTOMATION_JOBS
from gpt_pipeline.defs.automation import SCHEDULES, SENSORS
from gpt_pipeline.defs.champion import CHAMPION_ASSETS
from gpt_pipeline.defs.evaluation import EVALUATION_ASSETS, EVALUATION_JOBS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.jobs import JOBS
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sources import stories_source
from gpt_pipeline.defs.sweep_sensor import SENSORS as SWEEP_SENSORS


def build_defs(io_manager: AssetFileIOManager | None = None) -> dg.Definitions:
    """The definitions, storing assets with ``io_manager``: by default an ``AssetFileIOManager``
    that stores under ``$GPT_PIPELINE_STORAGE_URL`` when set (a local folder or an fsspec URL such
    as ``s3://bucket/prefix``), else under the data directory."""
    return dg.Definitions(
        assets=[stories_source, *ASSETS, *CHAMPION_ASSETS, *EVALUATION_ASSETS],
        jobs=[*JOBS, *AUTOMATION_JOBS, *EVALUATION_JOBS],
        schedules=SCHEDULES,
        sensors=[*SENSORS, *SWEEP_SENSORS],
        resources={"io_manager": io_manager or AssetFileIOManager(), "mlflow": MLflowResource()},
        executor=dg.in_process_executor,
    )


defs = build_defs()
