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


def test_experiment_is_tagged_as_model_development_when_created_or_found(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    created = Tracker(uri, "new")
    client = MlflowClient(uri)
    assert client.get_experiment(created.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    plain = client.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())
    assert "mlflow.experimentKind" not in client.get_experiment(plain).tags
    assert Tracker(uri, "older").experiment_id == plain
    assert client.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"


def test_metrics_linked_to_a_logged_model_rank_it_and_the_dataset_is_an_input(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp")
    models = {}
    for name, bpc in (("worse", 1.9), ("better", 1.2)):
        with tracker.run(name) as run:
            logged = tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=run.run_id)
            run.log_model_params(logged.model_id, {"learning_rate": 0.001, "layers": [1, 2]})
            run.log_metrics({"test_bits_per_character": bpc, "skipped": None}, step=40, model_id=logged.model_id,
                            dataset=("tokenized_dataset", "ab" * 32))
            run.log_dataset("tokenized_dataset", "ab" * 32, source=str(tmp_path / "d.parquet"))
            models[name] = logged.model_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the global URI: no set_tracking_uri, which outlives the test
    ranked = mlflow.search_logged_models(
        experiment_ids=[tracker.experiment_id], output_format="list",
        order_by=[{"field_name": "metrics.test_bits_per_character", "ascending": True}])
    assert [m.model_id for m in ranked] == [models["better"], models["worse"]]
    assert ranked[0].params == {"learning_rate": "0.001", "layers": "[1, 2]"}
    (metric,) = ranked[0].metrics
    assert (metric.key, metric.value, metric.step) == ("test_bits_per_character", 1.2, 40)
    assert (metric.dataset_name, metric.dataset_digest) == ("tokenized_dataset", "ab" * 16)
    inputs = tracker.client.get_run(run.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, i.dataset.source_type) for i in inputs] == [
        ("tokenized_dataset", "ab" * 16, "local")]
    assert str(tmp_path / "d.parquet") in inputs[0].dataset.source
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
