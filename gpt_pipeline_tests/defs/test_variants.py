"""Variants as dynamic partitions: a key that is not a recorded, safe variant is refused before any
work, however it got into the instance; a variant keeps the config it was recorded with."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.variants import (VARIANTS_NAME, Variant, VariantError, add_partition, known_variants,
                                        read_variant, save_variant)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

JOB = defs.resolve_job_def("train_gpt_job")
DATA = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_variant_keeps_its_config_and_unsafe_names_are_refused(tmp_path, isolated_storage):
    data, _ = isolated_storage
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        lr = Variant("lr_low", "s", {"trained_model": {"training_iterations": 40}},
                     {"trained_model": {"learning_rate": 0.001}})
        save_variant(instance, lr)
        save_variant(instance, lr)  # the same config again: nothing changes
        assert known_variants(instance) == ["lr_low"]
        assert json.loads((data / "variants" / "lr_low.json").read_text())["overrides"] == lr.overrides
        assert read_variant("lr_low") == lr and read_variant("default") == Variant("default")
        with pytest.raises(VariantError, match="variant 'lr_low' was trained with trained_model.learning_rate=0.001"):
            save_variant(instance, Variant("lr_low", "s", lr.base, {"trained_model": {"learning_rate": 0.002}}))
        assert read_variant("lr_low") == lr  # untouched
        for bad in ("../x", ".hidden", "a/b", "x" * 65, ""):
            with pytest.raises(VariantError, match="a name must be 1-64 letters"):
                add_partition(instance, bad)
        assert known_variants(instance) == ["lr_low"]


def test_a_partition_key_that_is_no_recorded_safe_variant_is_refused_before_any_work(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    data_config = {"ops": {a: TINY_RUN_CONFIG["ops"][a] for a in DATA}}
    model_config = {"ops": {"trained_model": TINY_RUN_CONFIG["ops"]["trained_model"]}}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert JOB.execute_in_process(run_config=data_config, instance=instance, asset_selection=[
            dg.AssetKey(a) for a in DATA]).success
        before = _files(tmp_path)
        runs_before = len(MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}").search_runs(["1"]))
        # Not a partition of the instance: Dagster refuses the launch itself.
        with pytest.raises(dg.DagsterUnknownPartitionError):
            JOB.execute_in_process(run_config=model_config, instance=instance, partition_key="../x",
                                   asset_selection=[dg.AssetKey("trained_model")])
        # Partitions added behind our back (the instance's API, GraphQL's addDynamicPartition):
        # an unsafe name, and a safe one without a recorded config, both refused first thing.
        instance.add_dynamic_partitions(VARIANTS_NAME, ["../x", "ghost"])
        for key, expected in (("../x", "partition key '../x' is not a variant name"),
                              ("ghost", "variant 'ghost' has no recorded config")):
            result = JOB.execute_in_process(run_config=model_config, instance=instance, partition_key=key,
                                            asset_selection=[dg.AssetKey("trained_model")], raise_on_error=False)
            assert not result.success
            failure = next(e for e in result.all_events if e.is_step_failure)
            assert expected in failure.step_failure_data.error.message, failure.step_failure_data.error.message
        assert _files(tmp_path) - before <= {f for f in _files(tmp_path) if f.startswith("home/")}
        assert not (data / "checkpoints").exists() and not (tmp_path / "x.safetensors").exists()
        assert len(MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}").search_runs(["1"])) == runs_before
