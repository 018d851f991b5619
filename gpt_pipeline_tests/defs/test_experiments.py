"""Two trainings with different learning rates through the real job: `gpt-pipeline compare`
ranks both, `champion` points at the better one, and the champion's pyfunc writes text."""

from __future__ import annotations

import copy

import dagster as dg
import pytest
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from gpt_pipeline.cli import main
from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


def test_learning_rate_comparison_and_champion(tmp_path, isolated_storage, capsys, monkeypatch):
    _, mlruns = isolated_storage
    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    home = tmp_path / "home"
    home.mkdir()
    job = defs.resolve_job_def("train_gpt_job")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for rate in (0.003, 0.008):
            config = copy.deepcopy(TINY_RUN_CONFIG)
            config["ops"]["trained_model"]["config"]["learning_rate"] = rate
            assert job.execute_in_process(run_config=config, instance=instance).success

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset_key` = 'trained_model'")
    by_rate = {r.data.params["learning_rate"]: r for r in runs}
    assert set(by_rate) == {"0.003", "0.008"}
    losses = {rate: run.data.metrics["final_test_loss"] for rate, run in by_rate.items()}
    better = min(losses, key=losses.get)
    assert losses["0.003"] != losses["0.008"]

    capsys.readouterr()
    assert main(["compare", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert by_rate[better].info.run_id[:8] in table
    lines = [line for line in table.splitlines() if "0.003" in line or "0.008" in line]
    assert len(lines) == 2
    assert "learning_rate" in table  # the differing param is a column
    first_ranked = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert by_rate[better].info.run_id[:8] in first_ranked

    champion = client.get_model_version_by_alias("gpt-pipeline", "champion")
    assert champion.run_id == by_rate[better].info.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/gpt-pipeline@champion")
    texts = model.predict(["Once"], params={"token_count": 8, "seed": 1})
    assert len(texts) == 1 and texts[0].startswith("Once") and len(texts[0]) > len("Once")


def _significant_digits(value: float) -> int:
    return len(f"{value:.12g}".lstrip("-").replace(".", "").lstrip("0").rstrip("0").split("e")[0])


def test_training_runs_compare_by_bits_per_character_without_clutter(tmp_path, isolated_storage, monkeypatch):
    """One configuration materialized twice (the second resumes at its last step, changing nothing):
    bits per character in MLflow and Dagster, the logged model ranked by it with its params, the
    dataset as the run's input, the sweep tags on the run, one registered version, no step-0
    throughput, an inline loss curve and rounded Dagster floats."""
    import base64
    import math

    import pyarrow.parquet as pq

    import mlflow
    from gpt_pipeline.data.dataset_files import content_digest, split_characters
    from gpt_pipeline.data.table_file import TableFile

    data, mlruns = isolated_storage
    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    home = tmp_path / "home"
    home.mkdir()
    job = defs.resolve_job_def("train_gpt_job")
    tags = {"gpt_pipeline/sweep": "sweep-test", "gpt_pipeline/variant": "tiny", "other/tag": "x"}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        first = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=instance, tags=tags)
        assert first.success
        metadata = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata
        dataset_metadata = instance.get_latest_materialization_event(
            dg.AssetKey("tokenized_dataset")).asset_materialization.metadata
        second = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=instance, tags=tags)
        assert second.success
        again = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata

    # The dataset knows its splits' characters: those of the stories (180 train, 20 test).
    texts = pq.read_table(data / "raw_stories.parquet").column("text").to_pylist()
    dataset = TableFile.stored_at(data / "tokenized_dataset.parquet")
    characters = {"train": sum(map(len, texts[:180])), "test": sum(map(len, texts[180:]))}
    assert split_characters(dataset) == characters
    assert dataset_metadata["test_characters"].value == characters["test"]
    test_tokens = dataset_metadata["test_tokens"].value

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset_key` = 'trained_model'",
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    run = runs[0]
    assert run.data.tags["gpt_pipeline/sweep"] == "sweep-test" and run.data.tags["gpt_pipeline/variant"] == "tiny"
    assert "other/tag" not in run.data.tags

    # bpc at every evaluation, exactly loss / ln 2 * tokens / characters of the test split.
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_loss")}
    bpc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_bits_per_character")}
    assert sorted(bpc) == sorted(losses) == [0, 20, 40]
    for step, loss in losses.items():
        assert bpc[step] == pytest.approx(loss / math.log(2) * test_tokens / characters["test"], rel=1e-12)
    assert len(client.get_metric_history(run.info.run_id, "train_bits_per_character")) == 3
    assert run.data.metrics["final_test_bits_per_character"] == pytest.approx(bpc[40], rel=1e-12)

    # No step-0 throughput that repeats the final one; one point per evaluation after a step.
    throughput = client.get_metric_history(run.info.run_id, "tokens_per_second")
    assert [m.step for m in throughput] == [20, 40]

    # The tokenized dataset is the run's training input, with its content digest.
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "tokenized_dataset"
    assert inputs[0].dataset.digest == content_digest(dataset)[:32]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"

    # The logged model has the params and final metrics: search_logged_models ranks by bpc.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the global URI: no set_tracking_uri, which outlives the test
    ranked = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list",
        order_by=[{"field_name": "metrics.test_bits_per_character", "ascending": True}])
    assert len(ranked) == 1  # the second materialization logged no second model
    model = ranked[0]
    assert model.params["learning_rate"] == "0.003" and model.params["embedding_size"] == "32"
    linked = {m.key: m for m in model.metrics}
    assert linked["test_bits_per_character"].value == pytest.approx(bpc[40], rel=1e-12)
    assert linked["test_bits_per_character"].dataset_name == "tokenized_dataset"
    assert metadata["mlflow_model_uri"].value == f"models:/{model.model_id}"

    # Same weights: one registered version, reused by the second materialization.
    versions = client.search_model_versions("name = 'gpt-pipeline'")
    assert len(versions) == 1 and len(versions[0].tags["weights_digest"]) == 64
    assert again["registered_model_version"].value == metadata["registered_model_version"].value == 1
    assert again["mlflow_model_uri"].value == metadata["mlflow_model_uri"].value
    assert again["resumed_from_step"].value == 40
    outputs = client.get_run(runs[1].info.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model.model_id]

    # Dagster: an inline PNG loss curve, floats rounded to 4 significant digits, bpc shown.
    curve = metadata["loss_curve"].value
    prefix = "![loss curve](data:image/png;base64,"
    assert curve.startswith(prefix) and curve.endswith(")")
    png = base64.b64decode(curve[len(prefix):-1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 30_000
    for key in ("train_loss", "test_loss", "test_bits_per_character", "train_bits_per_character",
                "unigram_test_loss", "tokens_per_second", "training_seconds"):
        assert _significant_digits(metadata[key].value) <= 4, (key, metadata[key].value)
    assert metadata["test_bits_per_character"].value == pytest.approx(bpc[40], rel=5e-4)
    assert metadata["test_loss"].value == pytest.approx(run.data.metrics["final_test_loss"], rel=5e-4)
