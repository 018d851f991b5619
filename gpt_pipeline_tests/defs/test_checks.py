"""Blocking asset checks: they pass on a good lineage, and a failing one stops the downstream
assets and leaves the last good stored file in place."""

from __future__ import annotations

import copy
import hashlib

import dagster as dg
import pyarrow as pa

from gpt_pipeline import quality
from gpt_pipeline.definitions import defs
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

CHECKS = {
    "bpe_tokenizer": "round_trip",
    "tokenized_dataset": "token_ids_in_vocab",
    "trained_model": "beats_unigram",
    "sample_generations": "generations_decode",
    "champion_model": "champion_generates",
    "champion_generations": "generations_decode",
}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(instance, run_config):
    return defs.resolve_job_def("train_gpt_job").execute_in_process(
        run_config=run_config, instance=with_default_variant(instance), raise_on_error=False, partition_key="default"
    )


def test_failing_check_blocks_downstream_and_keeps_last_good_model(tmp_path, isolated_storage):
    data, _ = isolated_storage
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        good = _run(instance, TINY_RUN_CONFIG)
        assert good.success
        evaluations = [
            e.event_specific_data for e in good.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        for asset, check in CHECKS.items():
            assert any(
                ev.check_name == check and ev.passed and ev.asset_key == dg.AssetKey(asset) for ev in evaluations
            ), check
        model_digest = _digest(data / "trained_model" / "default.safetensors")
        generations_digest = _digest(data / "sample_generations" / "default.parquet")
        champion_digest = _digest(data / "champion_model.safetensors")
        champion_generations_digest = _digest(data / "champion_generations.parquet")

        # One step at a negligible learning rate: the model is still at chance level, which a
        # unigram model beats, so the blocking check must fail.
        bad_config = copy.deepcopy(TINY_RUN_CONFIG)
        bad_config["ops"]["trained_model"]["config"].update(training_iterations=1, learning_rate=1e-9)
        bad = _run(instance, bad_config)
        assert not bad.success
        failures = [e for e in bad.all_events if e.is_step_failure]
        assert [e.step_key for e in failures] == ["trained_model"]
        assert "blocking check beats_unigram failed" in failures[0].step_failure_data.error.message
        evaluation = next(e for e in bad.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                          and e.event_specific_data.check_name == "beats_unigram")
        assert not evaluation.event_specific_data.passed
        executed = {e.step_key for e in bad.all_events if e.event_type_value == "STEP_START"}
        assert not executed & {"sample_generations", "champion_model", "champion_generations"}
        assert _digest(data / "trained_model" / "default.safetensors") == model_digest
        assert _digest(data / "sample_generations" / "default.parquet") == generations_digest
        assert _digest(data / "champion_model.safetensors") == champion_digest
        assert _digest(data / "champion_generations.parquet") == champion_generations_digest


def test_gates_known_answers():
    table = pa.table({"tokens": pa.array([[1, 2], [3]], pa.list_(pa.uint16()))})
    assert quality.token_ids_in_vocab(table, 4).passed
    failed = quality.token_ids_in_vocab(table, 3)
    assert not failed.passed and "token id 3" in failed.description
    train = TokenArray.from_lists([[0, 0, 1, 1]])
    test = TokenArray.from_lists([[0, 1]])
    # add-one smoothing over 3 tokens: p(0) = p(1) = 3/7
    assert abs(quality.unigram_loss(train, test, 3) - (-__import__("math").log(3 / 7))) < 1e-12
    assert not quality.beats_unigram(5.0, 4.0).passed
    assert not quality.beats_unigram(float("inf"), 4.0).passed
