"""A run whose sample prompts hold a character the tokenizer never saw is refused by
``trained_model`` before it trains (``defs.prompt_check``): no checkpoint, no model file, no
MLflow training run; the same run with ``unknown: skip`` trains."""

from __future__ import annotations

import copy

import dagster as dg
from mlflow.tracking import MlflowClient

from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant


def _run(tmp_path, config):
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        return defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=config, instance=with_default_variant(instance), partition_key="default", raise_on_error=False)


def test_unseen_prompt_characters_are_refused_before_training(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    config = copy.deepcopy(TINY_RUN_CONFIG)
    config["ops"]["sample_generations"]["config"]["prompts"] = ["Once", "Once \u00e9t\u00e9"]
    result = _run(tmp_path, config)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "trained_model"
    message = failure.step_failure_data.error.message
    assert ("sample_generations prompt 'Once \u00e9t\u00e9': 1 characters never seen in training: '\u00e9' (U+00E9) "
            "at 5, 7 (unknown='skip' drops them); refused before training") in message
    assert not (data / "trained_model").exists() and not list(data.rglob("*checkpoint*"))
    runs = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}").search_experiments()])
    assert not [r for r in runs if r.info.run_name.startswith("trained_model")]
