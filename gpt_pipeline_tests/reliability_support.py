"""Helpers for the reliability tests, and the worker processes those tests start and kill.

Imported by ``test_reliability_*.py``, ``test_determinism.py`` and ``test_safety.py``: file-tree
digests, the step failure of a Dagster result, the runs of an MLflow store, a run config written
as YAML, an environment for a child process.

Run as a script, it is one of the workers the tests start in a separate process:

    python -m gpt_pipeline_tests.reliability_support write-loop ROWS
        Store the asset ``big`` again and again through ``AssetFileIOManager`` (under
        ``$GPT_PIPELINE_DATA_DIR``), the n-th time ``big_frame(ROWS, n)``; print ``wrote n``
        after each complete write. The test kills it in the middle of a write.
    python -m gpt_pipeline_tests.reliability_support tracker URI GO_FILE
        Print ``ready`` once imported, wait until GO_FILE exists, then open
        ``gpt_pipeline.tracking.tracker.Tracker(URI)`` and print its experiment id: several of these
        released together race to create the same MLflow store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BIG_ASSET = "big"


# --- files --------------------------------------------------------------------------------------


def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (hidden and temporary files included).

    Example:
        >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "a").write_bytes(b"")
        >>> tree_digest(d)
        {'a': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'}
    """
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def temp_files(root: str | os.PathLike) -> list[str]:
    """Temporary files that ``gpt_pipeline.storage.atomic_write`` leaves when killed
    (``.<name>.<random>.tmp``), anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*.tmp"))


def big_frame(rows: int, version: int):
    """A DataFrame that is the same for the same ``(rows, version)``: ``version`` in every row and
    eight columns of random 64-bit integers (incompressible: the Parquet file is about 64 bytes a
    row, so writing it takes a while)."""
    import numpy as np
    import polars as pl

    values = np.random.default_rng(version).integers(0, 2**63, size=(8, rows), dtype=np.int64)
    columns = {f"c{i}": values[i] for i in range(8)}
    return pl.DataFrame({"version": np.full(rows, version, dtype=np.int64), **columns})


# --- Dagster ------------------------------------------------------------------------------------


def step_failures(result) -> list:
    """The STEP_FAILURE events of a Dagster execution result."""
    return [event for event in result.all_events if event.is_step_failure]


def error_chain(error) -> str:
    """A SerializableErrorInfo and its causes as text, for assertion messages."""
    parts = []
    while error is not None:
        parts.append(error.message.strip())
        error = error.cause
    return " <- caused by: ".join(parts)


# --- MLflow -------------------------------------------------------------------------------------


def mlflow_runs(uri: str) -> list:
    """Every run of every experiment in the MLflow store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=10_000) if experiments else []


_TEMPLATE_STORE: list[Path] = []


def fresh_mlflow_store(directory: str | os.PathLike) -> str:
    """``sqlite:///<directory>/mlflow.db``: an empty MLflow store, copied from one created once per
    test process (creating the tables takes seconds). No experiment in it yet: the first
    ``Tracker`` creates ``gpt-pipeline`` with its artifacts beside this copy."""
    import shutil
    import tempfile

    from gpt_pipeline.tracking.tracker import ensure_store

    if not _TEMPLATE_STORE:
        template = Path(tempfile.mkdtemp(prefix="mlflow_template_")) / "mlflow.db"
        ensure_store(f"sqlite:///{template}")
        _TEMPLATE_STORE.append(template)
    db = Path(directory) / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE_STORE[0], db)
    return f"sqlite:///{db}"


def run_statuses(uri: str) -> dict[str, str]:
    """``<asset key>@<run id prefix>`` -> status, for every run in the store (``?@...`` for a run
    of no asset: the sweep's parent run, FINISHED when created)."""
    return {f"{r.data.tags.get('dagster.asset_key', '?')}@{r.info.run_id[:8]}": r.info.status for r in mlflow_runs(uri)}


# --- processes ----------------------------------------------------------------------------------


def kill_running(*processes) -> None:
    """SIGKILL and reap each ``subprocess.Popen`` that has not ended (a test's ``finally``)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def race_trackers(uri: str, count: int, folder: Path) -> list[tuple[int, str, str]]:
    """Start ``count`` processes that open the MLflow store at ``uri`` at the same moment (each
    waits, imported, for a go file); return each one's exit status, stdout and stderr."""
    import subprocess

    go = folder / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "gpt_pipeline_tests.reliability_support", "tracker", uri, str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=child_env(),
        )
        for _ in range(count)
    ]
    try:
        for process in processes:  # all imported: release them together
            assert process.stdout.readline().strip() == "ready"
        go.touch()
        outcomes = [process.communicate(timeout=180) for process in processes]
    finally:
        kill_running(*processes)
    return [(process.returncode, out, err) for process, (out, err) in zip(processes, outcomes)]


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str):
    """A tmpfs of ``size`` ("1m") mounted at ``directory`` (created) for the block: a small disk
    that fills. Skips the test where tmpfs cannot be mounted (not root)."""
    import subprocess

    import pytest

    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def child_env(**overrides: str) -> dict[str, str]:
    """The current environment with ``overrides``, the repository on ``PYTHONPATH`` and one
    torch thread per process (the test machine has two cores, shared)."""
    env = dict(os.environ)
    env.update(overrides)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def write_run_config(path: str | os.PathLike, run_config: Mapping) -> Path:
    """``run_config`` as a YAML file for ``gpt-pipeline materialize --config``."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(dict(run_config)))
    return path


def wait_for(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy; return it. ``TimeoutError`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(interval)


# --- workers ------------------------------------------------------------------------------------


def _write_loop(rows: int) -> None:
    import dagster as dg

    from gpt_pipeline.defs.io_manager import AssetFileIOManager

    manager = AssetFileIOManager()
    version = 0
    while True:
        frame = big_frame(rows, version)
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey(BIG_ASSET)), frame)
        print(f"wrote {version}", flush=True)
        version += 1


def _tracker(uri: str, go_file: str) -> None:
    from gpt_pipeline.tracking.tracker import Tracker

    print("ready", flush=True)
    wait_for(lambda: os.path.exists(go_file), timeout=120, interval=0.002, what=go_file)
    print(Tracker(uri).experiment_id, flush=True)


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "write-loop":
        _write_loop(int(args[0]))
    elif command == "tracker":
        _tracker(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
