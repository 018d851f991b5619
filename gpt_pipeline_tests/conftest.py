"""Shared fixtures: an isolated data directory and MLflow store for every test that asks, the signal
dispositions each test found put back after it, and a
kernel cache of the session's own (no test reads or writes ``~/.cache``)."""

from __future__ import annotations

import os
import signal

import pytest


def pytest_configure(config):
    """Under ``pytest -n N`` (pytest-xdist, as ``make test`` runs), each worker is pinned to its
    own share of the cores, and so is every process it starts: two workers training at once do
    not spin OpenMP threads on each other's core (torch and ``devices`` read the affinity)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count:
        cores = sorted(os.sched_getaffinity(0))
        share = cores[int(worker.removeprefix("gw")) % len(cores)::int(count)] or cores
        os.sched_setaffinity(0, share)


@pytest.fixture(autouse=True, scope="session")
def session_kernel_cache(tmp_path_factory):
    """``GPT_PIPELINE_KERNEL_CACHE`` in a temporary folder for the whole session (subprocesses too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
        yield


@pytest.fixture(autouse=True)
def signals_kept():
    """SIGINT's and SIGTERM's dispositions put back after each test: Dagster's in-process runs
    (``dg.materialize`` in a test) give SIGTERM SIGINT's, which a background ``make test`` ignores,
    and every process a later test starts would inherit SIGTERM ignored."""
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in kept.items():
        if handler is not None:
            signal.signal(number, handler)


@pytest.fixture
def isolated_storage(tmp_path, monkeypatch):
    """Asset files under ``tmp_path/data``, MLflow in ``tmp_path/mlruns/mlflow.db`` and Optuna
    studies in ``tmp_path/mlruns/optuna.db``."""
    data = tmp_path / "data"
    mlruns = tmp_path / "mlruns"
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlruns / 'mlflow.db'}")
    monkeypatch.setenv("GPT_PIPELINE_STUDY_URL", f"sqlite:///{mlruns / 'optuna.db'}")  # searches' studies
    return data, mlruns
