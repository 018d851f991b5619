"""The whole lineage materialized into a temp directory with a real Dagster instance and a real
MLflow SQLite store: files, metadata, MLflow params and metrics. ``trained_model`` and
``sample_generations`` are partitioned by the sweep's variants (by default one, ``default``)."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient
from safetensors import safe_open

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.variants import VARIANTS
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

ASSET_KEYS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations"]
EVALUATED = ["model_evaluation", "champion_evaluation"]  # evaluate_job runs them alone
MATERIALIZED = [*ASSET_KEYS, "champion_model", "champion_generations", *EVALUATED]  # what a train_gpt_job run materializes
PARTITIONED = {"trained_model", "sample_generations", "model_evaluation"}


def test_definitions_form_one_lineage():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"stories_source", *MATERIALIZED}
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("model_evaluation")).parent_keys} == {
        "trained_model", "bpe_tokenizer", "tokenized_dataset"}
    assert dg.AssetKey("champion_model") in graph.get(dg.AssetKey("champion_evaluation")).parent_keys
    assert graph.get(dg.AssetKey("model_evaluation")).partitions_def == VARIANTS
    chain = ["stories_source", *ASSET_KEYS]
    for upstream, downstream in zip(chain, chain[1:]):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents
    champion_parents = {k.to_user_string() for k in graph.get(dg.AssetKey("champion_model")).parent_keys}
    assert "trained_model" in champion_parents and "sample_generations" not in champion_parents
    assert "model_evaluation" in champion_parents  # a model is evaluated before the election
    assert dg.AssetKey("champion_model") in graph.get(dg.AssetKey("champion_generations")).parent_keys
    assert graph.get(dg.AssetKey("stories_source")).is_observable
    for key in ["stories_source", *MATERIALIZED]:
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "gpt", key  # one group: the UI's "Materialize all" evaluates too
        if key in PARTITIONED:
            assert node.partitions_def == VARIANTS, key  # the variants: dynamic, recorded in the instance
        else:
            assert node.partitions_def is None, key
    job = defs.resolve_job_def("train_gpt_job")
    assert job is not None and job.partitions_def == VARIANTS


def test_train_gpt_job_materializes_everything(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default"
        )
        assert result.success
        for key in MATERIALIZED:
            materialization = instance.get_latest_materialization_event(dg.AssetKey(key))
            assert materialization is not None, key
            assert materialization.asset_materialization.partition == ("default" if key in PARTITIONED else None)
            metadata = materialization.asset_materialization.metadata
            assert metadata["size_bytes"].value > 0
            assert "mlflow_run" in metadata
        run_id = result.run_id

    # Files: one per asset, loadable.
    stories = pl.read_parquet(data / "raw_stories.parquet")
    assert stories.columns == ["text"] and len(stories) == 200
    tokenizer = BPETokenizer.load(data / "bpe_tokenizer.json")
    assert tokenizer.vocab_size == 300
    assert (data / "bpe_tokenizer.vocab.txt").stat().st_size > 0
    table = pq.read_table(data / "tokenized_dataset.parquet")
    assert str(table.schema.field("tokens").type) == "list<element: uint16>"
    assert table.column("split").to_pylist().count("train") == 180
    assert tokenizer.decode(table.column("tokens")[0].as_py()) == stories["text"][0]
    with safe_open(data / "trained_model" / "default.safetensors", "pt") as handle:
        assert "gpt_config" in "".join(handle.metadata() or {})
    with safe_open(data / "champion_model.safetensors", "pt") as handle:
        assert "gpt_config" in "".join(handle.metadata() or {})
    generations = pl.read_parquet(data / "sample_generations" / "default.parquet")
    assert generations["prompt"].to_list() == ["Once", "The dog"]
    assert all(text.startswith(p) for text, p in zip(generations["text"], generations["prompt"]))
    # The champion is the only variant's model: it writes the same stories (sample_generations' config).
    assert pl.read_parquet(data / "champion_generations.parquet").equals(generations)

    # MLflow: one run per asset, tagged with the Dagster run; the training run has its history.
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = client.search_runs([experiment.experiment_id], f"tags.`dagster.run_id` = '{run_id}'")
    assert sorted(r.data.tags["dagster.asset_key"] for r in runs) == sorted(MATERIALIZED)
    assert all(r.info.status == "FINISHED" for r in runs)
    training = next(r for r in runs if r.data.tags["dagster.asset_key"] == "trained_model")
    generating = next(r for r in runs if r.data.tags["dagster.asset_key"] == "sample_generations")
    assert training.info.run_name == f"trained_model-default-{run_id[:8]}"
    assert generating.data.tags["mlflow.parentRunId"] == training.info.run_id  # nested under its training
    assert generating.data.tags["gpt_pipeline/variant"] == training.data.tags["gpt_pipeline/variant"] == "default"
    sweep = client.get_run(training.data.tags["mlflow.parentRunId"])  # the sweep's parent run
    assert sweep.data.tags["gpt_pipeline/role"] == "sweep" and "dagster.asset_key" not in sweep.data.tags
    assert training.data.params["vocab_size"] == "300"
    assert training.data.params["embedding_size"] == "32"
    assert training.data.params["learning_rate"] == "0.003"
    history = client.get_metric_history(training.info.run_id, "test_loss")
    assert [m.step for m in history] == [0, 20, 40]
    train_history = client.get_metric_history(training.info.run_id, "train_loss")
    assert train_history[-1].value < train_history[0].value
    artifacts = {a.path for a in client.list_artifacts(training.info.run_id)}
    assert {"checkpoint", "tokenizer", "config.json"} <= artifacts
    tokenizer_files = {a.path for a in client.list_artifacts(training.info.run_id, "tokenizer")}
    assert {"tokenizer/bpe_tokenizer.json", "tokenizer/bpe_tokenizer.vocab.txt",
            "tokenizer/bpe_tokenizer.hf.json"} <= tokenizer_files  # the bundle, as the IO manager stores it


def test_trained_model_starts_from_a_checkpoint_and_exports_to_hugging_face(tmp_path, isolated_storage):
    import copy

    data, mlruns = isolated_storage
    home = tmp_path / "dagster_home"
    home.mkdir()
    job = defs.resolve_job_def("train_gpt_job")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default").success
        start = tmp_path / "start.safetensors"
        start.write_bytes((data / "trained_model" / "default.safetensors").read_bytes())
        config = copy.deepcopy(TINY_RUN_CONFIG)
        config["ops"]["trained_model"]["config"].update(initial_checkpoint=str(start), export_hf=True)
        second = job.execute_in_process(run_config=config, instance=with_default_variant(instance), partition_key="default")
        assert second.success
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`dagster.asset_key` = 'trained_model'", order_by=["attributes.start_time ASC"]
    )
    fresh, continued = runs
    fresh_start = client.get_metric_history(fresh.info.run_id, "test_loss")[0].value
    continued_start = client.get_metric_history(continued.info.run_id, "test_loss")[0].value
    assert continued_start < fresh_start - 0.5  # step 0 already has the trained weights
    hf_files = {a.path for a in client.list_artifacts(continued.info.run_id, "hf_model")}
    assert "hf_model/config.json" in hf_files and "hf_model/model.safetensors" in hf_files
