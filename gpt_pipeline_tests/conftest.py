"""Shared fixtures: an isolated data directory and MLflow store for every test that asks, and a
kernel cache of the session's own (no test reads or writes ``~/.cache``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def session_kernel_cache(tmp_path_factory):
    """``GPT_PIPELINE_KERNEL_CACHE`` in a temporary folder for the whole session (subprocesses too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPT_PIPELINE_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
        yield


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
