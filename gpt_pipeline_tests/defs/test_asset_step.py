"""gpt_pipeline.defs.asset_step: a toy asset that says only its own work gets the shared steps:
its config resolved, an MLflow run with the sweep's tags and its params, the gate before the
Output (a failed gate stores nothing), the data version, lineage and run link, the check result."""

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from gpt_pipeline.defs.asset_step import AssetStep
from gpt_pipeline.defs.checks import blocking_check
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.variants import VARIANTS
from gpt_pipeline.quality import Gate
from gpt_pipeline_tests.tiny_config import with_default_variant

NOT_EMPTY = blocking_check("words", "not_empty", "At least one word.")
SOURCE = "ab" * 32  # the digest of the toy's one input


class WordsConfig(dg.Config):
    count: int = 3


def _words(context: dg.AssetExecutionContext, config: WordsConfig, mlflow: MLflowResource):
    step = AssetStep(context, mlflow, config, check=NOT_EMPTY)
    with step.run() as run:
        words = ["word"] * step.config.count
        run.log_metrics({"words": len(words)})
        step.made(f"{len(words):064x}", {"source": SOURCE})
        yield from step.gate(Gate(bool(words), f"{len(words)} words", {"words": len(words)}))
    yield from step.results(words, {"words": dg.MetadataValue.int(len(words))})


words = dg.asset(name="words", check_specs=[NOT_EMPTY])(_words)
variant_words = dg.asset(name="words", check_specs=[NOT_EMPTY], partitions_def=VARIANTS)(_words)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (its tables are made once); each test reads its own runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def _materialize(asset, instance, store: str, count: int, **kwargs):
    mlflow = MLflowResource(tracking_uri=store, ui_url="http://127.0.0.1:5000")
    return dg.materialize([asset], instance=instance, resources={"mlflow": mlflow, "io_manager": dg.mem_io_manager},
                          run_config={"ops": {"words": {"config": {"count": count}}}}, raise_on_error=False, **kwargs)


def _mlflow_runs(store: str, result):
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`dagster.run_id` = '{result.run_id}'")


def test_a_passing_step_outputs_its_value_with_version_lineage_run_link_and_check(tmp_path, store):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = _materialize(words, instance, store, 3)
        assert result.success
        (event,) = result.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert list(metadata) == ["words", "content_digest", "made_from.source", "mlflow_run_id", "mlflow_run"]
        assert metadata["content_digest"].value == f"{3:064x}" and metadata["made_from.source"].value == SOURCE
        assert event.materialization.tags["dagster/data_version"] == f"{3:064x}"
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and check.description == "3 words" and check.metadata["words"].value == 3
        (run,) = _mlflow_runs(store, result)
        assert metadata["mlflow_run_id"].value == run.info.run_id and run.info.status == "FINISHED"
        assert metadata["mlflow_run"].value.startswith(f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/")
        assert run.data.params == {"count": "3"} and run.data.metrics == {"words": 3.0}
        assert run.data.tags["gpt_pipeline/sweep"] == "default" and "gpt_pipeline/variant" not in run.data.tags


def test_a_failed_gate_yields_its_result_and_stores_nothing(tmp_path, store):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = _materialize(words, instance, store, 0)
        assert not result.success
        assert not result.get_asset_materialization_events()
        (check,) = result.get_asset_check_evaluations()
        assert not check.passed and check.description == "0 words"
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_failure_data.user_failure_data.description == (
            "blocking check not_empty failed: 0 words; the stored words was left as it was")
        (run,) = _mlflow_runs(store, result)
        assert run.info.status == "FAILED" and run.data.params == {"count": "0"}


def test_a_partitioned_step_is_its_variants_and_its_run_says_so(tmp_path, store, isolated_storage):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = _materialize(variant_words, with_default_variant(instance), store, 2, partition_key="default")
        assert result.success
        (run,) = _mlflow_runs(store, result)
        assert run.data.tags["gpt_pipeline/variant"] == "default" and run.data.tags["dagster.partition"] == "default"
