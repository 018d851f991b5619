"""Shared fixtures: an isolated data directory and MLflow store for every test that asks, the signal
dispositions the session started with around each test, and a kernel cache of the session's own
(no test reads or writes ``~/.cache``); each pytest-xdist worker pinned to its own cores."""

from __future__ import annotations

import os
import signal

import pytest


_SESSION_SIGNALS: dict[int, object] = {}  # SIGINT's and SIGTERM's dispositions as the session found them


def pytest_configure(config):
    """The session's signal dispositions noted before any fixture runs (``signals_kept``). Under
    ``pytest -n N`` (pytest-xdist, as ``make test`` runs), each worker is pinned to its own share
    of the cores, and so is every process it starts: two workers training at once do not spin
    OpenMP threads on each other's core (torch and ``devices`` read the affinity)."""
    _SESSION_SIGNALS.update({number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)})
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
    """SIGINT's and SIGTERM's dispositions set to the session's before and after each test:
    Dagster's in-process runs (``dg.materialize`` in a test or in a module's fixture) give SIGTERM
    SIGINT's, which a background ``make test`` ignores, and every process a later test starts
    would inherit SIGTERM ignored (its compute-log ``tail`` then holds each run 30 s)."""
    def reset():
        for number, handler in _SESSION_SIGNALS.items():
            if handler is not None:
                signal.signal(number, handler)

    reset()
    yield
    reset()


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
