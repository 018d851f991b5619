"""The ``default`` variant trained twice with different learning rates through the real job: the
second replaces the first (its stored model and generations), `gpt-pipeline compare` still ranks
both MLflow runs, and ``champion_model`` (file, metadata and the ``champion`` alias) follows the
current model, not the best one ever trained; the champion's pyfunc writes text. The comparison
of variants side by side is ``test_sweep_runner``'s."""

from __future__ import annotations

import copy
import hashlib

import dagster as dg
import pytest
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from gpt_pipeline import provenance
from gpt_pipeline.cli import main
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.definitions import defs
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.training.metrics import FIGURE_DECIMALS, figure
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

# The second training (0.003: final test loss about 5.07) ends worse than the first (0.008: about
# 4.87): the champion must follow the variant's current model even when it is the worse one.
RATES = (0.008, 0.003)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_retraining_the_variant_replaces_it_and_the_champion_follows(tmp_path, isolated_storage, capsys, monkeypatch):
    data, mlruns = isolated_storage
    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    home = tmp_path / "home"
    home.mkdir()
    job = defs.resolve_job_def("train_gpt_job")
    model_file = data / "trained_model" / "default.safetensors"
    generations_file = data / "sample_generations" / "default.parquet"
    champion_file = data / "champion_model.safetensors"
    stored, champions, versions, aliases = {}, {}, {}, {}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for rate in RATES:
            config = copy.deepcopy(TINY_RUN_CONFIG)
            config["ops"]["trained_model"]["config"]["learning_rate"] = rate
            assert job.execute_in_process(run_config=config, instance=with_default_variant(instance), partition_key="default").success
            stored[rate] = (_digest(model_file), _digest(generations_file))
            model_meta = instance.get_latest_materialization_event(
                dg.AssetKey("trained_model")).asset_materialization.metadata
            versions[rate] = model_meta["registered_model_version"].value
            champions[rate] = instance.get_latest_materialization_event(
                dg.AssetKey("champion_model")).asset_materialization.metadata
            aliases[rate] = int(MlflowClient(uri).get_model_version_by_alias("gpt-pipeline", "champion").version)
        assert instance.get_materialized_partitions(dg.AssetKey("trained_model")) == {"default"}
        assert instance.get_materialized_partitions(dg.AssetKey("sample_generations")) == {"default"}
    # One partition, one file each: the second training replaced the first's model and generations.
    assert sorted(p.name for p in (data / "trained_model").iterdir()) == ["default.safetensors"]
    assert sorted(p.name for p in (data / "sample_generations").iterdir()) == ["default.parquet"]
    assert stored[RATES[0]][0] != stored[RATES[1]][0] and stored[RATES[0]][1] != stored[RATES[1]][1]
    assert not (data / "trained_model.safetensors").exists() and not (data / "sample_generations.parquet").exists()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset_key` = 'trained_model'")
    by_rate = {float(r.data.params["learning_rate"]): r for r in runs}
    assert set(by_rate) == set(RATES) and len(runs) == 2  # MLflow keeps both trainings
    assert all(r.info.run_name.startswith("trained_model-default-") for r in runs)
    assert all(r.data.tags["gpt_pipeline/variant"] == "default" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # the same sweep on the same data: one parent run
    parent = client.get_run(parents.pop())
    assert parent.data.tags["gpt_pipeline/role"] == "sweep" and "dagster.asset_key" not in parent.data.tags
    losses = {rate: run.data.metrics["final_test_loss"] for rate, run in by_rate.items()}
    better = min(losses, key=losses.get)
    current = RATES[-1]
    assert losses[current] > losses[RATES[0]] and better != current  # the premise, see RATES
    assert versions[RATES[0]] != versions[RATES[1]]  # two sets of weights, two registered versions

    # champion_model followed the current model of the variant after each run, not the best ever.
    storage = AssetFileIOManager()
    for rate in RATES:
        assert champions[rate]["champion"].value == "default"
        assert champions[rate]["registered_model_version"].value == versions[rate] == aliases[rate]
        assert champions[rate]["test_bits_per_character"].value == pytest.approx(
            by_rate[rate].data.metrics["final_test_bits_per_character"], rel=5e-4)
    champion_model = storage.load_stored(dg.AssetKey("champion_model"), GPT)
    assert provenance.weights_digest(champion_model) == provenance.weights_digest(
        storage.load_stored(dg.AssetKey("trained_model"), GPT, "default"))
    assert champion_file.is_file()
    champion_runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset_key` = 'champion_model'")
    assert len(champion_runs) == 2  # one per champion_model materialization
    assert all(r.data.tags["gpt_pipeline/champion"] == "default" for r in champion_runs)

    capsys.readouterr()
    assert main(["compare", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if "0.003" in line or "0.008" in line]
    assert len(lines) == 2  # both trainings, the replaced one too
    assert "learning_rate" in table  # the differing param is a column
    first_ranked = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert by_rate[better].info.run_id[:8] in first_ranked  # ranked by test loss
    marked = [line for line in lines if line.split()[1] == "*"]  # the champion column
    assert len(marked) == 1 and by_rate[current].info.run_id[:8] in marked[0]

    champion = client.get_model_version_by_alias("gpt-pipeline", "champion")
    assert champion.run_id == by_rate[current].info.run_id
    assert int(champion.version) == versions[current]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/gpt-pipeline@champion")
    assert model.metadata.run_id == by_rate[current].info.run_id
    texts = model.predict(["Once"], params={"token_count": 8, "seed": 1})
    assert len(texts) == 1 and texts[0].startswith("Once") and len(texts[0]) > len("Once")


def _decimals(value: float) -> int:
    """Decimal places of ``value`` as Python writes it shortest (``1.0816`` -> 4, ``37813.0`` -> 0)."""
    text = repr(float(value))
    return 0 if "e" in text else len(text.split(".")[1].rstrip("0"))


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
    # The run's own gpt_pipeline/ tags are copied, but the sweep and variant are the code location's
    # (the variant's recorded sweep and the partition), whatever a launch says.
    tags = {"gpt_pipeline/sweep": "sweep-test", "gpt_pipeline/variant": "tiny", "gpt_pipeline/schedule": "weekly",
            "other/tag": "x"}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        first = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), tags=tags,
                                       partition_key="default")
        assert first.success
        metadata = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata
        dataset_metadata = instance.get_latest_materialization_event(
            dg.AssetKey("tokenized_dataset")).asset_materialization.metadata
        second = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), tags=tags,
                                        partition_key="default")
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
    assert run.data.tags["gpt_pipeline/sweep"] == "default" and run.data.tags["gpt_pipeline/variant"] == "default"
    assert run.data.tags["gpt_pipeline/schedule"] == "weekly" and run.data.tags["dagster.partition"] == "default"
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
    assert "tokens_per_second" not in again  # nothing trained in that run: not measured (never nan)
    outputs = client.get_run(runs[1].info.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model.model_id]

    # Dagster: an inline PNG loss curve, figures rounded as every table shows them, bpc shown.
    # the curve in place: the run's loss_curve.png as the MLflow UI serves it (the run has it)
    assert metadata["loss_curve"].value.endswith(f"/get-artifact?path=loss_curve_small.png&run_uuid={run.info.run_id})")
    assert {"loss_curve.png", "loss_curve_small.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    curve = metadata["loss_curve_png"].value
    prefix = "![loss curve](data:image/png;base64,"
    assert curve.startswith(prefix) and curve.endswith(")")
    png = base64.b64decode(curve[len(prefix):-1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 30_000
    for key in ("train_loss", "test_loss", "test_bits_per_character", "train_bits_per_character",
                "unigram_test_loss", "tokens_per_second", "training_seconds"):
        assert metadata[key].value == figure(key, metadata[key].value), (key, metadata[key].value)
        assert _decimals(metadata[key].value) <= FIGURE_DECIMALS.get(key, 4), (key, metadata[key].value)
    assert metadata["test_bits_per_character"].value == pytest.approx(bpc[40], rel=5e-4)
    assert metadata["test_loss"].value == pytest.approx(run.data.metrics["final_test_loss"], rel=5e-4)
