"""The MLflow resource: one MLflow run per asset materialization, tagged with its Dagster run.

A thin Dagster wrapper around ``gpt_pipeline.tracking.tracker.Tracker``. The store defaults to
``$MLFLOW_TRACKING_URI`` or the project's SQLite database under ``mlruns/``; runs always end
FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from gpt_pipeline.tracking.parents import PARENT_TAG, extend_parent, sweep_parent_run
from gpt_pipeline.tracking.tracker import EXPERIMENT_NAME, TrackedRun, Tracker


WORKFLOW_QUERY = "workflowType=machine_learning"  # MLflow 3.x UI: the "Machine learning" view


class MLflowResource(dg.ConfigurableResource):
    """Where and under which experiment the assets log to MLflow."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Empty: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<project>/mlruns/mlflow.db with artifacts in mlruns/artifacts.",
    )
    experiment_name: str = Field(default=EXPERIMENT_NAME, description="MLflow experiment.")
    ui_url: str = Field(
        default="http://127.0.0.1:5000",
        description="Address of the MLflow UI, used for the links in asset metadata.",
    )

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.experiment_name)

    def run_url(self, run: TrackedRun) -> str:
        """The run's page in the MLflow UI, in its model-training view: MLflow 3's UI picks the view
        from a global switch (``?workflowType=``, else the browser's last choice, "genai" at
        first) and then ignores the experiment's ``mlflow.experimentKind`` tag."""
        return (f"{self.ui_url.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
                f"?{WORKFLOW_QUERY}")

    def sweep_parent(self, sweep: str, data_digest: str) -> str:
        """The run id of the sweep's parent run on this data (``tracking.parents``)."""
        return sweep_parent_run(self.tracker(), sweep, data_digest)

    @contextlib.contextmanager
    def asset_run(self, context: dg.AssetExecutionContext, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None) -> Iterator[TrackedRun]:
        """An MLflow run for this materialization, named ``<asset>[-<partition>]-<dagster run id
        prefix>``, tagged with the Dagster run, its own tags that start with ``gpt_pipeline/``,
        ``tags`` (``gpt_pipeline/sweep``, ``gpt_pipeline/variant``, ...), and nested under
        ``parent_run_id`` when given."""
        key = context.asset_key.to_user_string()
        partition = f"-{context.partition_key}" if context.has_partition_key else ""
        tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": key,
            "dagster.job": context.job_name or "",
            **({"dagster.partition": context.partition_key} if context.has_partition_key else {}),
            **{k: v for k, v in (context.run.tags or {}).items() if k.startswith("gpt_pipeline/")},
            **(tags or {}),
            **({PARENT_TAG: parent_run_id} if parent_run_id else {}),
        }
        tracker = self.tracker()
        try:
            with tracker.run(f"{key}{partition}-{context.run.run_id[:8]}", tags=tags) as run:
                context.log.info(f"MLflow run {run.run_id}: {self.run_url(run)}")
                yield run
        finally:
            if parent_run_id:  # a sweep's parent run spans its children
                with contextlib.suppress(Exception):
                    extend_parent(tracker, parent_run_id)
