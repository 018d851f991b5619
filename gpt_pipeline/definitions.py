"""The Dagster code location: ``defs`` holds the lineage's assets, job and resources.

``workspace.yaml`` (and ``dagster dev -m gpt_pipeline.definitions``) load this module.
"""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.automation import SCHEDULES, SENSORS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.jobs import JOBS
from gpt_pipeline.defs.resources import MLflowResource


def build_defs(io_manager: AssetFileIOManager | None = None) -> dg.Definitions:
    """The definitions, storing assets with ``io_manager``: by default an ``AssetFileIOManager``
    that stores under ``$GPT_PIPELINE_STORAGE_URL`` when set (a local folder or an fsspec URL such
    as ``s3://bucket/prefix``), else under the data directory."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources={"io_manager": io_manager or AssetFileIOManager(), "mlflow": MLflowResource()},
        executor=dg.in_process_executor,
    )


defs = build_defs()
