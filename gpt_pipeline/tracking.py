"""MLflow tracking for gpt_pipeline: where the store is, and one run per piece of work.

This module wraps ``mlflow.tracking.MlflowClient`` with explicit run ids (no global "active run"
state), so that several assets, threads or processes can log side by side. It does not know
about Dagster: the Dagster resource in ``gpt_pipeline.defs.resources`` and the CLI both use it.

- Store: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project root>/mlruns/mlflow.db``
  with artifacts under ``<project root>/mlruns/artifacts``. A SQLite store is created once,
  under a file lock, before any run is written (concurrent first creations race otherwise).
- Runs: :meth:`Tracker.run` is a context manager that yields a :class:`TrackedRun` and always
  ends the run, FINISHED on success and FAILED on any exception (KeyboardInterrupt included),
  so no run is left RUNNING by a failure in this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from gpt_pipeline.storage import project_root

EXPERIMENT_NAME = "gpt-pipeline"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
_MAX_PARAM_LENGTH = 6000


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or used; the message names the URI."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the project's SQLite store under ``mlruns/``.

    Example:
        >>> import os; os.environ.pop("MLFLOW_TRACKING_URI", None) and None
        >>> default_tracking_uri().endswith("/mlruns/mlflow.db")
        True
    """
    configured = os.environ.get(TRACKING_URI_ENV)
    if configured:
        return configured
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store.

    Example:
        >>> sqlite_path("sqlite:////tmp/x/mlflow.db"), sqlite_path("http://127.0.0.1:5000")
        (PosixPath('/tmp/x/mlflow.db'), None)
    """
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel -> "/rel" (relative to the cwd)
    raw = unquote(parsed.path)
    if raw.startswith("//"):
        return Path(raw[1:])
    return Path(raw.lstrip("/")).resolve()


def artifact_root(uri: str) -> str | None:
    """Artifact location for a new experiment: ``<db dir>/artifacts`` beside a SQLite store."""
    db = sqlite_path(uri)
    return (db.parent / "artifacts").as_uri() if db else None


def ensure_store(uri: str) -> None:
    """Create a SQLite store once, under an exclusive file lock (no-op for other stores)."""
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_MAX_PARAM_LENGTH]


class TrackedRun:
    """One MLflow run, addressed by id. Created by :meth:`Tracker.run`."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite numeric metrics at ``step`` (non-finite values are skipped, not stored)."""
        import time

        stamp = int(time.time() * 1000)
        items = [
            Metric(k, float(v), stamp, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_table(self, frame, artifact_file: str) -> None:
        """A polars or pandas DataFrame as an MLflow table artifact (shown in the run's UI)."""
        pandas_frame = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
        self.client.log_table(self.run_id, data=pandas_frame, artifact_file=artifact_file)


class Tracker:
    """The experiment ``experiment_name`` in the store at ``tracking_uri``."""

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = EXPERIMENT_NAME):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment_name = experiment_name
        try:
            ensure_store(self.tracking_uri)
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._experiment_id()
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one clear message
            raise TrackingError(
                f"MLflow tracking store {self.tracking_uri!r} cannot be used: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment_name, artifact_location=artifact_root(self.tracking_uri)
            )
        except Exception:
            # Another process created it between our lookup and our create.
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    @contextlib.contextmanager
    def run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[TrackedRun]:
        """Start a run; end it FINISHED, or FAILED if the body raises (then re-raise)."""
        try:
            created = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={k: str(v) for k, v in (tags or {}).items()},
            )
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(
                f"MLflow tracking store {self.tracking_uri!r} cannot start a run: {exc}"
            ) from exc
        run = TrackedRun(self.client, created.info.run_id, self.experiment_id)
        try:
            yield run
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run.run_id, "FAILED")
            raise
        self.client.set_terminated(run.run_id, "FINISHED")
