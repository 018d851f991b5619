"""End to end against the real servers: ``dagster dev`` runs ``train_gpt_job`` launched through
its GraphQL API, then ``mlflow server`` on the same SQLite store serves the training run, its
metric history and its artifacts through MLflow's REST API. Both servers are stopped in a
``finally``, and no process they started may outlive the test.

Every process the test starts carries a marker in its environment (inherited by its children,
grandchildren included), so leaks are found by reading ``/proc``, whatever session or process
group a child moved to.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from dagster_graphql import DagsterGraphQLClient

from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "GPT_PIPELINE_E2E_MARKER"
BUDGET_SECONDS = 170  # the whole test; make test allows 3 minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_processes(token: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment holds our marker."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's wait() is pending
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def _wait_all_exited(token: str, timeout: float = 20.0) -> dict[int, str]:
    """Wait for every marked process to exit (the Dagster code server stops a second or two
    after ``dagster dev``); return the ones still running after ``timeout``."""
    give_up = time.monotonic() + timeout
    while (alive := _marked_processes(token)) and time.monotonic() < give_up:
        time.sleep(0.25)
    return alive


def _prepare_child() -> None:
    """In the server's process before exec: default SIGINT and SIGTERM handling (a test run
    started in the background inherits SIGINT ignored, and ``dagster dev`` then ignores SIGTERM
    too), and SIGTERM when the test process dies, even by SIGKILL, so that a killed test run
    cannot leave a server behind (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A server in a session of its own (its process group is ours to kill), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_prepare_child)


def _stop(process: subprocess.Popen, grace: float = 30.0) -> bool:
    """SIGTERM to the server's own process (both servers shut their children down on it), then
    SIGKILL to its whole process group if it has not exited after ``grace`` seconds.
    True when it stopped on SIGTERM (or had already exited)."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return False


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_for(what: str, probe, deadline: float, process: subprocess.Popen, log: Path):
    """Call ``probe()`` until it returns something truthy; fail if the server dies or time runs out."""
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what}: server exited with {process.returncode}\n{_tail(log)}")
        try:
            result = probe()
        except (OSError, KeyError, ValueError):  # not listening yet, or not answering in full
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out\n{_tail(log)}")
        time.sleep(0.5)


def _http_json(url: str, payload: dict | None = None, timeout: float = 10.0) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _graphql(port: int, query: str) -> dict:
    return _http_json(f"http://127.0.0.1:{port}/graphql", {"query": query})["data"]


WORKSPACE_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "\
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
MATERIALIZATION_QUERY = """{ assetOrError(assetKey: {path: ["trained_model"]}) { ... on Asset {
  assetMaterializations(limit: 1) { runId
    metadataEntries { label ... on TextMetadataEntry { text } } } } } }"""


def _location_loaded(port: int) -> bool:
    entries = _graphql(port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
    if errors:
        raise AssertionError(f"code location failed to load: {entries}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")  # dagster_graphql's use of gql
def test_dagster_run_then_mlflow_rest(tmp_path):
    deadline = time.monotonic() + BUDGET_SECONDS
    token = uuid.uuid4().hex
    store = tmp_path / "mlruns" / "mlflow.db"
    tracking_uri = f"sqlite:///{store}"
    (tmp_path / "dagster_home").mkdir()
    env = {
        **os.environ,
        MARKER: token,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "GPT_PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner worker pool beside the server
        "PYTHONUNBUFFERED": "1",
    }
    dagster_port, mlflow_port = _free_port(), _free_port()
    dagster_log, mlflow_log = tmp_path / "dagster.log", tmp_path / "mlflow.log"
    servers: list[subprocess.Popen] = []
    try:
        # --- Dagster: load the code location, launch the job through GraphQL, wait for success.
        dagster = _start(
            [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(dagster_port),
             "-w", str(REPO_ROOT / "workspace.yaml")],
            env, dagster_log, tmp_path,
        )
        servers.append(dagster)
        _wait_for("dagster dev loads the code location", lambda: _location_loaded(dagster_port),
                  deadline, dagster, dagster_log)
        commands = list(_marked_processes(token).values())
        assert sum("code-server start" in c for c in commands) == 1, commands
        assert sum("dagster_webserver" in c for c in commands) == 1, commands
        assert sum("dagster._daemon" in c for c in commands) == 1, commands

        client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_port)
        dagster_run_id = client.submit_job_execution("train_gpt_job", run_config=TINY_RUN_CONFIG)
        status = _wait_for(
            "train_gpt_job finishes",
            lambda: (s := client.get_run_status(dagster_run_id).value) in ("SUCCESS", "FAILURE", "CANCELED")
            and s,
            deadline, dagster, dagster_log,
        )
        assert status == "SUCCESS", _tail(dagster_log, 80)
        latest = _graphql(dagster_port, MATERIALIZATION_QUERY)["assetOrError"]["assetMaterializations"][0]
        assert latest["runId"] == dagster_run_id
        linked_run = {e["label"]: e.get("text") for e in latest["metadataEntries"]}["mlflow_run_id"]

        # --- MLflow: serve the same store, read the run back over REST.
        mlflow = _start(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", tracking_uri,
             "--default-artifact-root", (store.parent / "artifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            env, mlflow_log, tmp_path,
        )
        servers.append(mlflow)
        api = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow"
        experiment = _wait_for(
            "mlflow server answers",
            lambda: _http_json(f"{api}/experiments/get-by-name?experiment_name=gpt-pipeline")["experiment"],
            deadline, mlflow, mlflow_log,
        )
        found = _http_json(f"{api}/runs/search", {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.`dagster.asset_key` = 'trained_model'",
        })["runs"]
        assert len(found) == 1
        run = found[0]
        run_id = run["info"]["run_id"]
        assert run_id == linked_run  # the Dagster asset's metadata links to this MLflow run
        assert run["info"]["status"] == "FINISHED"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["dagster.run_id"] == dagster_run_id
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        model_config = TINY_RUN_CONFIG["ops"]["trained_model"]["config"]
        assert float(params["learning_rate"]) == model_config["learning_rate"]
        assert int(params["training_iterations"]) == model_config["training_iterations"]
        assert int(params["vocab_size"]) == TINY_RUN_CONFIG["ops"]["bpe_tokenizer"]["config"]["vocab_size"]

        history = _http_json(f"{api}/metrics/get-history?run_id={run_id}&metric_key=test_loss")["metrics"]
        assert sorted(m["step"] for m in history) == [0, 20, 40]  # evaluation_interval 20 of 40 steps
        assert all(math.isfinite(m["value"]) and m["value"] > 0 for m in history)
        latest_metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert latest_metrics["test_loss"] == max(history, key=lambda m: m["step"])["value"]

        def listing(path: str = "") -> dict[str, dict]:
            query = urllib.parse.urlencode({"run_id": run_id, **({"path": path} if path else {})})
            return {f["path"]: f for f in _http_json(f"{api}/artifacts/list?{query}").get("files", [])}

        top = listing()
        assert {"checkpoint", "tokenizer", "config.json"} <= set(top)
        assert listing("checkpoint")["checkpoint/final.safetensors"]["file_size"] > 0
        assert "tokenizer/bpe_tokenizer.json" in listing("tokenizer")
        query = urllib.parse.urlencode({"run_id": run_id, "path": "config.json"})
        url = f"http://127.0.0.1:{mlflow_port}/get-artifact?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.loads(response.read())["learning_rate"] == model_config["learning_rate"]
        assert "loss_curve.png" in top and "generations.json" in top
        best = _http_json(f"{api}/registered-models/alias?name=gpt-pipeline&alias=champion")["model_version"]
        assert best["run_id"] == run_id
        assert float({t["key"]: t["value"] for t in best["tags"]}["test_loss"]) == latest_metrics["test_loss"]
    finally:
        stopped_cleanly = [_stop(server) for server in reversed(servers)]
        survivors = _wait_all_exited(token)
        for pid in survivors:  # ours by the marker: never leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert all(stopped_cleanly), f"a server ignored SIGTERM: {stopped_cleanly}"
    assert survivors == {}, f"processes outlived their servers: {survivors}"
