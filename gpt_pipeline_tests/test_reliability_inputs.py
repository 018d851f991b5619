"""Every bad input of issue 7 answered clearly through Dagster (the CLI: ``test_reliability_cli``).

The lineage is materialized once with the tiny config (session fixture); each test
copies those files into its own data directory, materializes one asset with one bad value and
checks that

- only that step fails, and the first line of its failure message (``error.message``, what the
  Dagster UI and ``gpt-pipeline materialize`` show first) names the problem and the value;
- every file materialized before (checkpoints included) is byte-identical afterwards and no file
  was added (for ``trained_model``: no checkpoint written, the config was checked first);
- no MLflow run is left RUNNING.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.training.checkpoint import save_checkpoint
from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.reliability_support import fresh_mlflow_store
from gpt_pipeline_tests.reliability_workspace import Baseline, Workspace
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

TINY_MODEL = TINY_RUN_CONFIG["ops"]["trained_model"]["config"]
SNOWMAN = "\u2603"  # a character no generated story holds


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    uri = fresh_mlflow_store(root / "mlruns")
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPT_PIPELINE_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("DAGSTER_HOME", raising=False)
        result = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key=DEFAULT_VARIANT)
        assert result.success
        tokenizer = BPETokenizer.load(root / "data" / "bpe_tokenizer.json")
        yield Baseline(root, root / "data", uri, instance, len(tokenizer.alphabet), tokenizer.vocab_size)


@pytest.fixture
def ws(baseline, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(baseline.data, data)
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", baseline.uri)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return Workspace(data, baseline, tmp_path)


# --- raw_stories: the source file --------------------------------------------------------------


def _parquet(directory: Path, name: str, columns: dict, schema: pa.Schema | None = None) -> str:
    path = directory / name
    pq.write_table(pa.table(columns, schema=schema), path)
    return str(path)


def _source_missing(d: Path):
    path = str(d / "missing.parquet")
    return {"path": path}, ["not found", path]


def _source_not_parquet(d: Path):
    path = d / "stories.parquet"
    path.write_text("Once upon a time there was a text file.\n")
    return {"path": str(path)}, ["not a Parquet file", str(path)]


def _source_directory(d: Path):
    (d / "folder.parquet").mkdir()
    return {"path": str(d / "folder.parquet")}, ["not a file", str(d / "folder.parquet")]


def _source_no_rows(d: Path):
    path = _parquet(d, "empty.parquet", {"text": pa.array([], pa.string())})
    return {"path": path}, ["no rows", path]


def _source_only_null(d: Path):
    path = _parquet(d, "nulls.parquet", {"text": pa.array([None, None], pa.string())})
    return {"path": path}, ["only null or empty text", "'text'"]


def _source_only_empty(d: Path):
    path = _parquet(d, "blank.parquet", {"story": ["", "", ""]})
    return {"path": path}, ["only null or empty text", "'story'"]


def _source_null_and_empty(d: Path):
    path = _parquet(d, "mixed.parquet", {"text": pa.array(["", None, ""], pa.string())})
    return {"path": path}, ["only null or empty text", "'text'"]


def _source_named_column_missing(d: Path):
    path = _parquet(d, "named.parquet", {"text": ["Once there was a cat."]})
    return {"path": path, "text_column": "story"}, ["'story'", "not found"]


def _source_first_column_not_text(d: Path):
    path = _parquet(d, "ids.parquet", {"id": [1, 2], "text": ["A cat.", "A dog."]})
    return {"path": path}, ["'id'", "not text", "int64"]


def _source_named_column_not_text(d: Path):
    path = _parquet(d, "ids.parquet", {"text": ["A cat.", "A dog."], "score": [0.5, 1.5]})
    return {"path": path, "text_column": "score"}, ["'score'", "not text", "double"]


def _embedded_corpus_no_stories(d: Path):
    return {"num_stories": 0}, ["num_stories", "got 0"]


SOURCE_CASES = {
    "missing_file": _source_missing,
    "not_parquet": _source_not_parquet,
    "directory": _source_directory,
    "no_rows": _source_no_rows,
    "only_null": _source_only_null,
    "only_empty": _source_only_empty,
    "null_and_empty": _source_null_and_empty,
    "named_column_missing": _source_named_column_missing,
    "first_column_not_text": _source_first_column_not_text,
    "named_column_not_text": _source_named_column_not_text,
    "embedded_corpus_no_stories": _embedded_corpus_no_stories,
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_raw_stories_rejects_bad_source(ws, case):
    config, fragments = SOURCE_CASES[case](ws.tmp)
    before = ws.snapshot()
    result = ws.materialize("raw_stories", config)
    ws.assert_step_fails_clearly(result, "raw_stories", fragments, before)


# --- bpe_tokenizer: vocab_size -----------------------------------------------------------------


def test_vocab_size_below_the_alphabet_names_both_numbers(ws, baseline):
    before = ws.snapshot()
    result = ws.materialize("bpe_tokenizer", {"vocab_size": 10})
    fragments = [re.compile(rf"\b{baseline.alphabet_size}\b"), re.compile(r"\b10\b"), "vocab_size"]
    ws.assert_step_fails_clearly(result, "bpe_tokenizer", fragments, before)


def test_vocab_size_above_what_the_data_can_reach(ws):
    before = ws.snapshot()
    result = ws.materialize("bpe_tokenizer", {"vocab_size": 1_000_000})
    ws.assert_step_fails_clearly(result, "bpe_tokenizer", ["1000000", "no pair left to merge"], before)


@pytest.mark.parametrize("vocab_size", [0, -5])
def test_vocab_size_below_one(ws, vocab_size):
    before = ws.snapshot()
    result = ws.materialize("bpe_tokenizer", {"vocab_size": vocab_size})
    ws.assert_step_fails_clearly(result, "bpe_tokenizer", ["vocab_size", f"got {vocab_size}"], before)


# --- tokenized_dataset: training_percentage ----------------------------------------------------


@pytest.mark.parametrize("percentage", [0.0, 1.0, 1.5, -0.25, math.nan])
def test_training_percentage_outside_zero_one(ws, percentage):
    before = ws.snapshot()
    result = ws.materialize("tokenized_dataset", {"training_percentage": percentage})
    ws.assert_step_fails_clearly(result, "tokenized_dataset", ["training_percentage", f"got {percentage}"], before)


def test_training_percentage_leaving_the_train_split_empty(ws):
    before = ws.snapshot()
    result = ws.materialize("tokenized_dataset", {"training_percentage": 0.001})  # floor(200 * 0.001) = 0
    ws.assert_step_fails_clearly(result, "tokenized_dataset", ["training_percentage=0.001", "empty"], before)


def test_training_percentage_leaving_the_test_split_without_a_usable_story(ws):
    # 0.995 of 200 stories: 199 train, 1 test. A context as long as that test story leaves the
    # test split without any story of context_length + 1 tokens, while the train split has some.
    assert ws.materialize("tokenized_dataset", {"training_percentage": 0.995}).success
    table = pq.read_table(ws.data / "tokenized_dataset.parquet")
    lengths = [len(tokens) for tokens in table.column("tokens").to_pylist()]
    test_length = lengths[-1]
    assert table.column("split").to_pylist()[-1] == "test" and max(lengths[:-1]) > test_length + 1
    before = ws.snapshot()
    config = {**TINY_MODEL, "context_length": test_length, "contexts_per_batch": 1}
    result = ws.materialize("trained_model", config)
    ws.assert_step_fails_clearly(result, "trained_model", ["test", f"context_length + 1 = {test_length + 1}"], before)


# --- trained_model: transformer and training config --------------------------------------------

SIZES_AND_COUNTS = [
    "embedding_size", "context_length", "head_count", "block_count", "feed_forward_multiplier",
    "training_iterations", "evaluation_iterations", "contexts_per_batch",
]
DROPOUTS = ["embedding_dropout", "attention_dropout", "feed_forward_dropout", "residual_dropout"]

MODEL_CASES = {
    "embedding_not_divisible_by_heads": (
        {"embedding_size": 32, "head_count": 3}, ["embedding_size=32", "head_count=3"]
    ),
    # every size and count at 0, one of them negative
    **{f"{name}_zero": ({name: 0}, [name, "got 0"]) for name in SIZES_AND_COUNTS},
    "block_count_negative": ({"block_count": -1}, ["block_count", "got -1"]),
    # every dropout outside [0, 1), at either end
    **{f"{name}_{label}": ({name: value}, [name, f"got {value}"])
       for (name, (label, value)) in zip(DROPOUTS, [("one", 1.0), ("negative", -0.1)] * 2)},
    "no_story_with_context_length_plus_one": ({"context_length": 100_000}, ["context_length + 1 = 100001"]),
    "contexts_per_batch_above_eligible": ({"contexts_per_batch": 1000}, ["contexts_per_batch=1000"]),
    "evaluation_interval_zero": ({"evaluation_interval": 0}, ["evaluation_interval", "got 0"]),
    "learning_rate_zero": ({"learning_rate": 0.0}, ["learning_rate", "got 0.0"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_trained_model_rejects_bad_config_before_training(ws, case):
    overrides, fragments = MODEL_CASES[case]
    before = ws.snapshot()
    result = ws.materialize("trained_model", {**TINY_MODEL, **overrides})
    # No new file: not even a checkpoint folder, so training never started.
    ws.assert_step_fails_clearly(result, "trained_model", fragments, before)


def test_whole_job_with_a_bad_model_config_fails_at_its_first_step_before_any_work(ws):
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["trained_model"]["config"]["head_count"] = 3
    before = ws.snapshot()
    result = defs.resolve_job_def("train_gpt_job").execute_in_process(
        run_config=run_config, instance=with_default_variant(ws.baseline.instance), raise_on_error=False, partition_key=DEFAULT_VARIANT
    )
    # The run's first step checks the whole run config (checks.user_errors): nothing is rewritten.
    ws.assert_step_fails_clearly(result, "raw_stories", ["trained_model", "embedding_size=32", "head_count=3"], before)


# --- sample_generations: the checkpoint and the sampling config --------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CHECKPOINT_CORRUPTIONS = {
    "truncated": _truncate,
    "header_only": lambda path: path.write_bytes(path.read_bytes()[:64]),
    "not_safetensors": lambda path: path.write_bytes(b'{"weights": "this is JSON, not safetensors"}'),
    "empty_file": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("corruption", list(CHECKPOINT_CORRUPTIONS))
def test_unreadable_checkpoint(ws, corruption):
    path = ws.data / "trained_model" / f"{DEFAULT_VARIANT}.safetensors"
    CHECKPOINT_CORRUPTIONS[corruption](path)
    before = ws.snapshot()
    result = ws.materialize("sample_generations", {"prompts": ["Once"], "token_count": 5})
    ws.assert_step_fails_clearly(result, "sample_generations", [str(path), "safetensors"], before)


def _mismatched_model(vocab_size: int) -> GPT:
    fields = {k: TINY_MODEL[k] for k in ("embedding_size", "context_length", "head_count", "block_count",
                                          "feed_forward_multiplier")}
    return GPT(GPTConfig(vocab_size=vocab_size, **fields))


def test_checkpoint_whose_vocabulary_does_not_match_the_tokenizer(ws, baseline):
    save_checkpoint(ws.data / "trained_model" / f"{DEFAULT_VARIANT}.safetensors", _mismatched_model(50))
    before = ws.snapshot()
    result = ws.materialize("sample_generations", {"prompts": ["Once"], "token_count": 5})
    fragments = [re.compile(r"\b50\b"), re.compile(rf"\b{baseline.vocab_size}\b"), "vocab"]
    ws.assert_step_fails_clearly(result, "sample_generations", fragments, before)


SAMPLING_CASES = {
    "empty_prompt": ({"prompts": [""]}, ["prompt", "empty"]),
    "empty_prompt_among_others": ({"prompts": ["Once", ""]}, ["prompt", "empty"]),
    "no_prompts": ({"prompts": []}, ["prompts", "empty"]),
    "unseen_character": ({"prompts": [f"Once {SNOWMAN}"]}, [SNOWMAN, "U+2603"]),
    "temperature_zero": ({"temperature": 0.0}, ["temperature", "got 0.0"]),
    "temperature_negative": ({"temperature": -0.5}, ["temperature", "got -0.5"]),
    "temperature_nan": ({"temperature": math.nan}, ["temperature", "nan"]),
    "temperature_inf": ({"temperature": math.inf}, ["temperature", "inf"]),
    "token_count_zero": ({"token_count": 0}, ["token_count", "got 0"]),
    "token_count_negative": ({"token_count": -3}, ["token_count", "got -3"]),
    "top_k_zero": ({"top_k": 0}, ["top_k", "got 0"]),
    "num_samples_zero": ({"num_samples": 0}, ["num_samples", "got 0"]),
    "unknown_mode": ({"unknown": "ignore"}, ["unknown", "ignore"]),  # refused by the schema's enum
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
def test_sample_generations_rejects_bad_config(ws, case):
    overrides, fragments = SAMPLING_CASES[case]
    before = ws.snapshot()
    result = ws.materialize("sample_generations", {"prompts": ["Once"], "token_count": 5, **overrides})
    ws.assert_step_fails_clearly(result, "sample_generations", fragments, before)


def test_unseen_characters_are_dropped_in_skip_mode(ws):
    result = ws.materialize(
        "sample_generations", {"prompts": [f"Once {SNOWMAN}"], "token_count": 5, "unknown": "skip"}
    )
    assert result.success
    texts = pq.read_table(ws.data / "sample_generations" / f"{DEFAULT_VARIANT}.parquet").column("text").to_pylist()
    assert len(texts) == 1 and texts[0].startswith(f"Once {SNOWMAN}")


# --- unknown config keys ------------------------------------------------------------------------

UNKNOWN_KEYS = {
    "raw_stories": "pth",
    "bpe_tokenizer": "vocab",
    "tokenized_dataset": "training_percent",
    "trained_model": "embeding_size",
    "sample_generations": "prompt",
}


@pytest.mark.parametrize("asset", list(UNKNOWN_KEYS))
def test_unknown_config_key_is_refused_before_any_step(ws, asset):
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"][asset]["config"][UNKNOWN_KEYS[asset]] = 1
    before = ws.snapshot()
    with pytest.raises(dg.DagsterInvalidConfigError) as raised:
        defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=run_config, instance=with_default_variant(ws.baseline.instance), raise_on_error=False,
            partition_key=DEFAULT_VARIANT,
        )
    assert f'"{UNKNOWN_KEYS[asset]}"' in str(raised.value) and asset in str(raised.value)
    assert ws.snapshot() == before
