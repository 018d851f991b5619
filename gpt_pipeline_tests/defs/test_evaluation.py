"""model_evaluation and champion_evaluation in a real Dagster instance and MLflow store: a
degenerate model fails the blocking check, keeps the champion from electing it and leaves its
figures in MLflow; with the margins widened it passes, and the figures reach the metadata, the
model's run, its logged model and the champion's standings."""

from __future__ import annotations

import dagster as dg
import mlflow
import polars as pl
import pytest

from gpt_pipeline.definitions import defs
from gpt_pipeline.training.metrics import figure_text
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

LENIENT = {"stories": 8, "max_continuation_tokens": 24, "max_repeated_4gram_excess": 1.0,
           "max_unseen_word_excess": 1.0}


def _materialize(instance, asset: str, config: dict | None = None, partition: str | None = "default"):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(asset)})
    return job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False,
                                  run_config={"ops": {asset: {"config": config}}} if config else None)


def _check(result, asset: str):
    return next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.event_specific_data.asset_key == dg.AssetKey(asset))


def test_a_collapsing_model_is_failed_and_never_elected_then_passes_with_wider_margins(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default").success

        # 40 steps of a 1-block model: most of what it writes is not a word of the stories
        bad = _materialize(instance, "model_evaluation", {"stories": 8, "max_continuation_tokens": 24})
        assert not bad.success
        check = _check(bad, "model_evaluation")
        assert not check.passed and "unseen-word rate" in check.description
        failure = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
        assert "blocking check continuations_do_not_collapse failed" in failure
        assert not (data / "model_evaluation" / "default.parquet").exists()
        champion = _materialize(instance, "champion_model", partition=None)
        assert not champion.success
        reason = next(e for e in champion.all_events if e.is_step_failure).step_failure_data.error.message
        assert "default: evaluation failed: unseen-word rate" in reason

        good = _materialize(instance, "model_evaluation", LENIENT)
        assert good.success and _check(good, "model_evaluation").passed
        stored = pl.read_parquet(data / "model_evaluation" / "default.parquet")
        assert stored.columns == ["story", "prompt", "truth", "model", "bigram"] and len(stored) == 8
        meta = instance.get_latest_materialization_event(dg.AssetKey("model_evaluation")).asset_materialization.metadata
        assert meta["evaluation"].value.startswith("| figure | model | true stories | bigram |")
        assert meta["bits_by_position"].value.startswith("![")
        assert len(meta["samples"].value.records) == 5
        figure = meta["eval_unseen_word_rate"].value
        model_meta = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata

        client = mlflow.MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
        model_run = client.get_run(model_meta["mlflow_run_id"].value)
        assert abs(model_run.data.metrics["eval_unseen_word_rate"] - figure) < 1e-3
        assert model_run.data.metrics["eval_passed"] == 1.0
        model_id = model_meta["mlflow_model_uri"].value.removeprefix("models:/")
        ranked = client.search_logged_models(experiment_ids=[model_run.info.experiment_id],
                                             order_by=[{"field_name": "metrics.eval_rouge_l", "ascending": False}])
        logged = next(m for m in ranked if m.model_id == model_id)
        assert any(m.key == "eval_rouge_l" for m in logged.metrics)

        champion = _materialize(instance, "champion_model", partition=None)
        assert champion.success
        standings = instance.get_latest_materialization_event(dg.AssetKey("champion_model")).asset_materialization
        shown = {r.data["variant"]: r.data for r in standings.metadata["evaluation"].value.records}
        assert shown["default"]["unseen"] == figure_text("eval_unseen_word_rate", figure)

        champion_evaluation = _materialize(instance, "champion_evaluation", LENIENT, partition=None)
        assert champion_evaluation.success and _check(champion_evaluation, "champion_evaluation").passed
        assert (data / "champion_evaluation.parquet").is_file()


def test_an_evaluation_setting_out_of_its_bounds_is_refused_in_one_line():
    """Dagster's schema has no bounds: the step refuses them when it builds its config (a one-line
    ``Failure``, before its body runs), as here."""
    from gpt_pipeline.defs.evaluation import ModelEvaluationConfig

    for field, value, message in (("stories", 0, "EvaluationConfig.stories must be a positive integer, got 0"),
                                  ("max_unseen_word_excess", 1.5, "EvaluationConfig.max_unseen_word_excess")):
        with pytest.raises(dg.Failure) as refused:
            ModelEvaluationConfig(**{field: value})
        assert refused.value.description.startswith(message) and "\n" not in refused.value.description
