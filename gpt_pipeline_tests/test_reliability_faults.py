"""Faults with real processes and signals: no fault loses work or leaves a half-written file.

- SIGKILL in the middle of an IO manager write: the previous file is intact, and the temporary
  file the killed process could not remove is gone after the next write.
- SIGKILL in the middle of training (``gpt-pipeline materialize``): every checkpoint on disk is
  whole, rematerializing resumes from the last one, and the killed MLflow run is not left RUNNING.
- SIGTERM in the middle of training: the process ends and its MLflow run is not left RUNNING.
- An MLflow store that cannot be reached fails the first asset that logs, naming the URI, before
  any training starts.
"""

from __future__ import annotations

import copy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from gpt_pipeline.training.checkpoint import read_checkpoint
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT, VARIANT_ASSETS
from gpt_pipeline_tests.reliability_support import (
    kill_running,
    BIG_ASSET,
    big_frame,
    child_env,
    error_chain,
    fresh_mlflow_store,
    run_statuses,
    step_failures,
    temp_files,
    tree_digest,
    wait_for,
    write_run_config,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

BIG_ROWS = 300_000  # about 20 MB of Parquet: a write takes a good fraction of a second here
TRAINING_EVALUATION_INTERVAL = 20
UPSTREAM = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]


def _long_training_config(iterations: int) -> dict:
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["trained_model"]["config"].update(
        training_iterations=iterations, evaluation_interval=TRAINING_EVALUATION_INTERVAL
    )
    return run_config


# --- SIGKILL during an IO manager write ---------------------------------------------------------


def _growing_temp_file(directory: Path) -> bool:
    for path in directory.glob(f".{BIG_ASSET}.parquet.*.tmp"):
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed into place between glob and stat
            pass
    return False


def _kill_during_a_write(data: Path, tmp_path: Path) -> int:
    """Start the write loop, SIGKILL it while a write (not the first) is half done; return the
    last version it reported complete."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "gpt_pipeline_tests.reliability_support", "write-loop", str(BIG_ROWS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=child_env(GPT_PIPELINE_DATA_DIR=str(data)),
    )
    try:
        first = worker.stdout.readline()
        assert first.strip() == "wrote 0", f"the writer did not start: {first!r} {worker.stderr.read()[-2000:]}"
        wait_for(lambda: _growing_temp_file(data), timeout=60, interval=0.001, what="a write in progress")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    reported = [int(line.split()[1]) for line in [first, *worker.stdout.read().splitlines()] if line.strip()]
    return max(reported)


def test_sigkill_during_an_io_manager_write_keeps_the_previous_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    for _attempt in range(3):  # the kill must land while a temporary file exists
        last = _kill_during_a_write(data, tmp_path)
        if temp_files(data):
            break
    assert temp_files(data), "could not kill the writer in the middle of a write"

    # The asset file is one whole earlier version (the one reported, or the next if the kill
    # came between the rename and the report), byte for byte what was written.
    stored = pl.read_parquet(data / f"{BIG_ASSET}.parquet")
    version = int(stored["version"][0])
    assert version in (last, last + 1)
    assert stored.equals(big_frame(BIG_ROWS, version))

    # A killed process cannot remove its temporary file; the next write must not leave it behind.
    AssetFileIOManager().handle_output(
        dg.build_output_context(asset_key=dg.AssetKey(BIG_ASSET)), big_frame(10, 1000)
    )
    assert pl.read_parquet(data / f"{BIG_ASSET}.parquet").equals(big_frame(10, 1000))
    assert temp_files(data) == [], "temporary files of the killed write are still there"


# --- SIGKILL / SIGTERM during training ----------------------------------------------------------


def _step_checkpoints(data: Path) -> dict[int, Path]:
    """The step checkpoints of the default variant (``checkpoints/trained_model/<variant>/<fingerprint>/``)."""
    found = {}
    for path in (data / "checkpoints" / "trained_model" / DEFAULT_VARIANT).glob("*/*.safetensors"):
        if path.stem.isdigit():
            found[int(path.stem)] = path
    return found


def _start_materialize(tmp_path: Path, run_config: dict, uri: str) -> tuple[subprocess.Popen, Path]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    config = write_run_config(tmp_path / "run.yaml", run_config)
    log = tmp_path / "materialize.log"
    env = child_env(
        GPT_PIPELINE_DATA_DIR=str(tmp_path / "data"), MLFLOW_TRACKING_URI=uri, DAGSTER_HOME=str(home)
    )
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )
    return process, log


def _stop_at_checkpoint(process: subprocess.Popen, log: Path, data: Path, step: int, sig: int) -> None:
    try:
        wait_for(
            lambda: process.poll() is not None or max(_step_checkpoints(data), default=-1) >= step,
            timeout=180, interval=0.02, what=f"checkpoint {step}",
        )
        assert process.poll() is None, f"the run ended before checkpoint {step}: {log.read_text()[-3000:]}"
        process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        kill_running(process)


def test_sigkill_during_training_then_rematerialization_resumes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    uri = fresh_mlflow_store(tmp_path / "mlruns")
    run_config = _long_training_config(iterations=200)
    process, log = _start_materialize(tmp_path, run_config, uri)
    _stop_at_checkpoint(process, log, data, step=40, sig=signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL

    # Never a half-written checkpoint: every file under its final name loads whole.
    checkpoints = _step_checkpoints(data)
    for path in checkpoints.values():
        read_checkpoint(path)
    last = max(checkpoints)
    assert last >= 40 and not list((data / "checkpoints").rglob("final.safetensors"))
    killed = {name for name, status in run_statuses(uri).items() if status == "RUNNING"}
    assert [name.split("@")[0] for name in killed] == ["trained_model"]

    # Rematerialize, in this process, with the same Dagster instance, data and MLflow store.
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=run_config, instance=with_default_variant(instance), partition_key=DEFAULT_VARIANT)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
        metadata = event.asset_materialization.metadata
    assert metadata["resumed_from_step"].value == last
    history = metadata["loss_history"].value
    assert [entry.data["step"] for entry in history.records] == list(range(0, 201, TRAINING_EVALUATION_INTERVAL))
    for path in data.rglob("*.safetensors"):
        read_checkpoint(path)
    assert temp_files(data) == [], "temporary files of the killed run are still there"
    statuses = run_statuses(uri)
    assert "RUNNING" not in statuses.values(), f"runs left RUNNING after the rematerialization: {statuses}"


def test_sigterm_during_training_leaves_no_mlflow_run_running(tmp_path):
    data = tmp_path / "data"
    uri = fresh_mlflow_store(tmp_path / "mlruns")
    process, log = _start_materialize(tmp_path, _long_training_config(iterations=400), uri)
    _stop_at_checkpoint(process, log, data, step=20, sig=signal.SIGTERM)
    assert process.returncode != 0
    for path in _step_checkpoints(data).values():
        read_checkpoint(path)
    statuses = run_statuses(uri)
    assert statuses and "RUNNING" not in statuses.values(), (
        f"runs left RUNNING after SIGTERM: {statuses}; the run's log ends with {log.read_text()[-3000:]}"
    )


# --- an MLflow store that cannot be reached -----------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Stories, tokenizer and dataset materialized with a working store."""
    root = tmp_path_factory.mktemp("upstream")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPT_PIPELINE_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", fresh_mlflow_store(root / "mlruns"))
        result = dg.materialize(
            ASSETS,
            selection=UPSTREAM,
            resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
            run_config={"ops": {k: TINY_RUN_CONFIG["ops"][k] for k in UPSTREAM}},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
    return root / "data"


def _unreachable_uri(kind: str, tmp_path: Path) -> str:
    if kind == "http_closed_port":
        return f"http://127.0.0.1:{_closed_port()}"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    return f"sqlite:///{blocker / 'mlflow.db'}"  # its folder is a file


@pytest.mark.parametrize("kind", ["http_closed_port", "sqlite_under_a_file"])
@pytest.mark.parametrize("asset", ["raw_stories", "trained_model"])
def test_unreachable_mlflow_fails_the_asset_before_training(tmp_path, monkeypatch, upstream, kind, asset):
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    uri = _unreachable_uri(kind, tmp_path)
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # MLflow retries HTTP requests for minutes by default; the product's failure must not depend
    # on that, so the test keeps it short.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    before = tree_digest(data)
    started = time.monotonic()
    result = dg.materialize(
        ASSETS,
        selection=[asset],
        resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
        run_config={"ops": {asset: TINY_RUN_CONFIG["ops"][asset]}},
        instance=with_default_variant(dg.DagsterInstance.ephemeral()),
        raise_on_error=False,
        partition_key=DEFAULT_VARIANT if asset in VARIANT_ASSETS else None,
    )
    assert time.monotonic() - started < 60
    assert not result.success
    (failure,) = step_failures(result)
    error = failure.step_failure_data.error
    first_line = error.message.strip().splitlines()[0]
    assert uri in first_line, f"the URI is not in {first_line!r}; whole error: {error_chain(error)}"
    # No asset file changed and no checkpoint written: no training started.
    after = tree_digest(data)
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/")} == before
    assert not [k for k in after if k.startswith("checkpoints/") and k.endswith(".safetensors")]
