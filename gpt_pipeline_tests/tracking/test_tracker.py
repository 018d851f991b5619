"""The MLflow wrapper against a real SQLite store: run states, params, metrics, errors."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from gpt_pipeline.tracking.tracker import Tracker, TrackingError, artifact_root, sqlite_path


def test_sqlite_uri_parsing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert sqlite_path(uri) == tmp_path / "mlflow.db"
    assert artifact_root(uri) == (tmp_path / "artifacts").as_uri()
    assert sqlite_path("http://127.0.0.1:5000") is None


def test_runs_end_finished_or_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp")
    with tracker.run("ok", tags={"k": "v"}) as run:
        run.log_params({"a": 1, "b": "x"})
        run.log_metrics({"loss": 2.5, "nan": float("nan")}, step=3)
        (tmp_path / "f.txt").write_text("hello")
        run.log_artifact(tmp_path / "f.txt", "files")
    with pytest.raises(KeyError):
        with tracker.run("broken") as failed:
            raise KeyError("boom")
    client = MlflowClient(uri)
    good = client.get_run(run.run_id)
    assert good.info.status == "FINISHED"
    assert good.data.params == {"a": "1", "b": "x"}
    assert good.data.metrics == {"loss": 2.5}
    assert client.get_metric_history(run.run_id, "loss")[0].step == 3
    assert good.data.tags["k"] == "v"
    assert [a.path for a in client.list_artifacts(run.run_id, "files")] == ["files/f.txt"]
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert (tmp_path / "artifacts").is_dir()


def test_unusable_store_names_the_uri(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{blocker}/mlflow.db"
    with pytest.raises(TrackingError, match="file/mlflow.db"):
        Tracker(uri)
