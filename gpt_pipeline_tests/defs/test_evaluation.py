"""model_evaluation and champion_evaluation in a real Dagster instance and MLflow store: the
lineage evaluates every model before the election; a model whose continuations fail the blocking
check, or that was never evaluated, is never elected however low its bits per character, and
the champion's standings say why; the figures reach the metadata, the model's run, its logged
model and the standings."""

from __future__ import annotations

import dagster as dg
import mlflow
import polars as pl
import pytest

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.variants import Variant, save_variant
from gpt_pipeline.training.metrics import figure_text
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant



def _materialize(instance, asset: str, config: dict | None = None, partition: str | None = "default"):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(asset)})
    return job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False,
                                  run_config={"ops": {asset: {"config": config}}} if config else None)


def _check(result, asset: str):
    return next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.event_specific_data.asset_key == dg.AssetKey(asset))


def _config(**configs) -> dict:
    """TINY_RUN_CONFIG's ops of the assets named, each updated with the fields given."""
    return {"ops": {asset: {"config": {**TINY_RUN_CONFIG["ops"][asset]["config"], **values}}
                    for asset, values in configs.items()}}


def _standings(instance) -> dict[str, dict]:
    """champion_model's latest standings by variant: its three tables' cells together."""
    meta = instance.get_latest_materialization_event(dg.AssetKey("champion_model")).asset_materialization.metadata
    rows: dict[str, dict] = {}
    for table in ("standings", "variants", "evaluation"):
        for record in meta[table].value.records:
            rows.setdefault(record.data["variant"], {}).update(record.data)
    return {"champion": meta["champion"].value, **rows}


def test_only_a_model_whose_evaluation_passed_is_elected_and_the_standings_say_why(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        # train_gpt_job evaluates the model before the election (TINY_RUN_CONFIG: margins of 1)
        lineage = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default")
        assert lineage.success and _check(lineage, "model_evaluation").passed
        assert _check(lineage, "champion_evaluation").passed and (data / "champion_evaluation.parquet").is_file()
        stored = pl.read_parquet(data / "model_evaluation" / "default.parquet")
        assert stored.columns == ["story", "prompt", "truth", "model", "bigram"] and len(stored) == 4
        meta = instance.get_latest_materialization_event(dg.AssetKey("model_evaluation")).asset_materialization.metadata
        assert meta["evaluation"].value.startswith("| figure | model | true stories | bigram |")
        assert meta["bits_by_position"].value.startswith("![")
        assert len(meta["samples"].value.records) == 4
        figure = meta["eval_unseen_word_rate"].value
        standing = _standings(instance)
        assert standing["champion"] == "default"
        assert standing["default"]["unseen"] == figure_text("eval_unseen_word_rate", figure)

        # Two variants that would win on bits per character (twice the training): one whose
        # continuations fail the check at its default margins, one never evaluated. Neither is elected.
        # (A variant's record binds its evaluation settings too: sharper's are the default margins.)
        longer = {"training_iterations": 80, "evaluation_interval": 40}
        save_variant(instance, Variant("sharper", "evaluation_test", overrides={
            "trained_model": longer, "model_evaluation": {"max_repeated_4gram_excess": 0.1, "max_unseen_word_excess": 0.1}}))
        # (another seed: the same weights as sharper's would be judged by sharper's failed evaluation)
        save_variant(instance, Variant("unjudged", "evaluation_test", overrides={"trained_model": {**longer, "seed": 8}}))
        sharper = defs.resolve_job_def("train_gpt_job").execute_in_process(
            instance=instance, partition_key="sharper", raise_on_error=False,
            asset_selection=[dg.AssetKey("trained_model"), dg.AssetKey("model_evaluation")],
            run_config=_config(trained_model={}, model_evaluation={}))
        assert not sharper.success and not _check(sharper, "model_evaluation").passed
        assert not (data / "model_evaluation" / "sharper.parquet").exists()
        assert _materialize(instance, "trained_model", TINY_RUN_CONFIG["ops"]["trained_model"]["config"],
                            partition="unjudged").success
        assert _materialize(instance, "champion_model", partition=None).success
        standing = _standings(instance)
        assert standing["champion"] == "default" and standing["default"]["rank"] == "1"
        for variant in ("sharper", "unjudged"):
            assert standing[variant]["rank"] == "-"
        bpc = {variant: _bits_per_character(instance, variant) for variant in ("default", "sharper", "unjudged")}
        assert bpc["sharper"] < bpc["default"] and bpc["unjudged"] < bpc["default"], bpc
        assert standing["sharper"]["overrides / note"].startswith("evaluation failed: unseen-word rate")
        assert standing["unjudged"]["overrides / note"] == (
            "not evaluated: its current model has no model_evaluation (materialize model_evaluation[unjudged])")

        # Re-evaluated with the default margins, the default model fails too: the stored evaluation
        # is left as it was, and with no passing variant there is no champion, each one saying why.
        before = (data / "model_evaluation" / "default.parquet").read_bytes()
        bad = _materialize(instance, "model_evaluation", {"stories": 4, "max_continuation_tokens": 24})
        assert not bad.success
        check = _check(bad, "model_evaluation")
        assert not check.passed and "unseen-word rate" in check.description
        failure = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
        assert "blocking check continuations_do_not_collapse failed" in failure
        assert (data / "model_evaluation" / "default.parquet").read_bytes() == before
        champion = _materialize(instance, "champion_model", partition=None)
        assert not champion.success
        reason = next(e for e in champion.all_events if e.is_step_failure).step_failure_data.error.message
        assert "no variant has an evaluated model trained on the current data" in reason
        assert "default: evaluation failed: unseen-word rate" in reason and "sharper: evaluation failed" in reason
        assert "unjudged: not evaluated" in reason

        # the figures reach the model's MLflow run and its logged model
        model_meta = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("trained_model"), asset_partitions=["default"]),
            limit=1).records[0].asset_materialization.metadata
        client = mlflow.MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
        model_run = client.get_run(model_meta["mlflow_run_id"].value)
        assert model_run.data.metrics["eval_passed"] == 0.0  # the latest evaluation, the failed one
        assert 0 <= model_run.data.metrics["eval_unseen_word_rate"] <= 1
        model_id = model_meta["mlflow_model_uri"].value.removeprefix("models:/")
        ranked = client.search_logged_models(experiment_ids=[model_run.info.experiment_id],
                                             order_by=[{"field_name": "metrics.eval_rouge_l", "ascending": False}])
        logged = next(m for m in ranked if m.model_id == model_id)
        assert any(m.key == "eval_rouge_l" for m in logged.metrics)


def _bits_per_character(instance, variant: str) -> float:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("trained_model"), asset_partitions=[variant]), limit=1).records
    return records[0].asset_materialization.metadata["test_bits_per_character"].value


def test_an_evaluation_setting_out_of_its_bounds_is_refused_in_one_line():
    """Dagster's schema has no bounds: the step refuses them when it builds its config (a one-line
    ``Failure``, before its body runs), as here."""
    from gpt_pipeline.defs.evaluation import ModelEvaluationConfig

    for field, value, message in (("stories", 0, "EvaluationConfig.stories must be a positive integer, got 0"),
                                  ("max_unseen_word_excess", 1.5, "EvaluationConfig.max_unseen_word_excess")):
        with pytest.raises(dg.Failure) as refused:
            ModelEvaluationConfig(**{field: value})
        assert refused.value.description.startswith(message) and "\n" not in refused.value.description
