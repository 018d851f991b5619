"""Shared fixtures: an isolated data directory and MLflow store for every test that asks."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_storage(tmp_path, monkeypatch):
    """Asset files under ``tmp_path/data`` and MLflow in ``tmp_path/mlruns/mlflow.db``."""
    data = tmp_path / "data"
    mlruns = tmp_path / "mlruns"
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlruns / 'mlflow.db'}")
    return data, mlruns
