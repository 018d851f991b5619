"""MLflow tracking for gpt_pipeline: where the store is, and one run per piece of work.

This module wraps ``mlflow.tracking.MlflowClient`` with explicit run ids (no global "active run"
state), so that several assets, threads or processes can log side by side. It does not know
about Dagster: the Dagster resource in ``gpt_pipeline.defs.resources`` and the CLI both use it.

- Store: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project root>/mlruns/mlflow.db``
  with artifacts under ``<project root>/mlruns/artifacts``. A SQLite store is created once,
  under a file lock, before any run is written (concurrent first creations race otherwise); a
  PostgreSQL store (``postgresql+psycopg2://...``) likewise under a PostgreSQL advisory lock.
  New experiments in a database store keep their artifacts in
  ``$GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT`` when set (e.g. ``s3://bucket/mlflow``), else beside a
  SQLite file, else in ``<project root>/mlruns/artifacts``. Behind an MLflow server
  (``http(s)://``) the server decides where artifacts go.
- Experiment: tagged ``mlflow.experimentKind = custom_model_development`` (when created, or
  found without it), so the MLflow UI opens it on its training runs and models.
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
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from gpt_pipeline.storage import project_root

EXPERIMENT_NAME = "gpt-pipeline"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ARTIFACT_ROOT_ENV = "GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT"
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_STORE_LOCK_KEY = 0x6770745F706970  # any constant: the PostgreSQL advisory lock of store creation
_MAX_PARAM_LENGTH = 6000
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DATASET_DIGEST_LENGTH = 32  # MLflow stores dataset digests in 36 characters


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


def database_scheme(uri: str) -> str | None:
    """The database of a store URI (``sqlite``, ``postgresql``, ...), None for a server or files.

    Example:
        >>> database_scheme("postgresql+psycopg2://u:p@db:5432/mlflow"), database_scheme("https://m")
        ('postgresql', None)
    """
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    return scheme if scheme in _DATABASE_SCHEMES else None


def redacted(uri: str) -> str:
    """``uri`` without its password, for messages and logs.

    Example:
        >>> redacted("postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow")
        'postgresql+psycopg2://mlflow:***@db:5432/mlflow'
        >>> redacted("sqlite:////tmp/mlflow.db")
        'sqlite:////tmp/mlflow.db'
    """
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    user, _, host = parsed.netloc.rpartition("@")
    return parsed._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def artifact_root(uri: str) -> str | None:
    """Artifact location for a new experiment in the store at ``uri``.

    ``$GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT`` for any database store when set; else
    ``<db dir>/artifacts`` beside a SQLite store, ``<project root>/mlruns/artifacts`` for another
    database (MLflow's own default, ``./mlruns`` of whatever the current directory is, would
    scatter artifacts); None for a tracking server, which decides itself.
    """
    if database_scheme(uri) is None:
        return None
    configured = os.environ.get(ARTIFACT_ROOT_ENV)
    if configured:
        return configured
    db = sqlite_path(uri)
    return (db.parent / "artifacts").as_uri() if db else (project_root() / "mlruns" / "artifacts").as_uri()


@contextlib.contextmanager
def _postgres_lock(uri: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock (one key for all our processes) on the store's database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _STORE_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _STORE_LOCK_KEY})
    finally:
        engine.dispose()


def ensure_store(uri: str) -> None:
    """Create a SQLite or PostgreSQL store once, under an exclusive lock (no-op for others).

    MLflow creates its tables on the first connection to an empty database; two processes
    doing so at once fail with duplicate-table errors. The lock makes them take turns: the
    first creates the tables, the others find them.
    """
    db = sqlite_path(uri)
    if db is None:
        if database_scheme(uri) == "postgresql":
            with _postgres_lock(uri):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then hand them to their handlers.

    An interrupt that lands inside an MLflow store write (a SQLite transaction) can leave the
    store unusable for the rest of the process, so that the run can no longer be ended and
    stays RUNNING. Writes are short: deferring the signal costs milliseconds. Only the main
    thread can change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda number, frame: received.append((number, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in received:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


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
            with signals_deferred():
                self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(
        self,
        metrics: Mapping[str, float | None],
        step: int | None = None,
        model_id: str | None = None,
        dataset: tuple[str, str] | None = None,
    ) -> None:
        """Log finite numeric metrics at ``step`` (None and non-finite values are skipped, not
        stored); with ``model_id`` they are also the metrics of that logged model (what
        ``mlflow.search_logged_models`` ranks by), with ``dataset`` (name, digest) measured on it."""
        stamp = int(time.time() * 1000)
        name, digest = dataset or (None, None)
        items = [
            Metric(k, float(v), stamp, step or 0, model_id=model_id, dataset_name=name,
                   dataset_digest=digest[:DATASET_DIGEST_LENGTH] if digest else None)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            with signals_deferred():
                self.client.log_batch(self.run_id, metrics=items)

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """Record the dataset at ``source`` (a path or URI) with content ``digest`` as an input of
        the run (``context``: what the run used it for), shown in the run's Datasets section."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
        dataset = MetaDataset(LocalArtifactDatasetSource(str(source)), name=name,
                              digest=digest[:DATASET_DIGEST_LENGTH])
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for attempt in range(3):  # two trainings that log one dataset at once race in MLflow's get-or-create
            try:
                with signals_deferred():
                    self.client.log_inputs(self.run_id, datasets=[entry])
                return
            except Exception as error:  # noqa: BLE001 - MlflowException or SQLAlchemy's: the unique key lost
                if "unique" not in str(error).lower() or attempt == 2:
                    raise
            time.sleep(0.2 * (attempt + 1))  # the other's row is there now: linked on the next try

    def log_model_params(self, model_id: str, params: Mapping[str, Any]) -> None:
        """``params`` as the parameters of the logged model ``model_id`` (shown and searchable with it)."""
        with signals_deferred():
            self.client.log_model_params(model_id, {k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with signals_deferred():
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
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow's defaults retry an unreachable server for about four minutes; fail in seconds.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        try:
            ensure_store(self.tracking_uri)
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._experiment_id()
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one clear message
            raise TrackingError(
                f"MLflow tracking store {redacted(self.tracking_uri)!r} cannot be used: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment_name, artifact_location=artifact_root(self.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
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
            self.end_dead_runs()
            with signals_deferred():
                created = self.client.create_run(
                    self.experiment_id,
                    run_name=run_name,
                    tags={**{k: str(v) for k, v in (tags or {}).items()}, **_process_tags()},
                )
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(
                f"MLflow tracking store {redacted(self.tracking_uri)!r} cannot start a run: {exc}"
            ) from exc
        run = TrackedRun(self.client, created.info.run_id, self.experiment_id)
        try:
            yield run
        except BaseException:
            with contextlib.suppress(Exception), signals_deferred():
                self.client.set_terminated(run.run_id, "FAILED")
            raise
        with signals_deferred():
            self.client.set_terminated(run.run_id, "FINISHED")

    def end_dead_runs(self) -> list[str]:
        """Mark KILLED every RUNNING run of the experiment whose process is gone (SIGKILL, OOM
        killer, power loss: nothing in that process could end its run); return their ids.
        Runs of live processes, here or on other hosts, are left alone."""
        running = self.client.search_runs(
            [self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000
        )
        ended = []
        for found in running:
            if _process_alive(found.data.tags):
                continue
            self.client.set_terminated(found.info.run_id, "KILLED")
            ended.append(found.info.run_id)
        return ended


HOST_TAG, PID_TAG, START_TAG = "gpt_pipeline.host", "gpt_pipeline.pid", "gpt_pipeline.process_start"


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), or "" when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: _process_start(pid)}


def _process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process that started a run (its ``_process_tags``) may still be running."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return True  # another machine's run, or one that predates these tags: not ours to judge
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = tags.get(START_TAG, "")
    return not started or _process_start(pid) in ("", started)  # a reused pid is another process
