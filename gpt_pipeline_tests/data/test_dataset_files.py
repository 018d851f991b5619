"""The tokenized dataset written as a stream and read back memory-mapped (``dataset_files``).

Known answers: the streamed Parquet file equals what ``build_dataset_table`` stored before, for
any batch size; the memory-mapped companion equals the Parquet file's splits; stale or damaged
companions are refused; the lineage trains from the memory maps; training's anonymous memory
does not grow with the token data.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import load_file

from gpt_pipeline import quality
from gpt_pipeline.data.splits import DataError, build_dataset_table, dataset_splits, dataset_stats
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.data.config import DatasetConfig
from gpt_pipeline.data.dataset_files import ARRAYS, DatasetWriter, open_token_arrays
from gpt_pipeline.data.encode_stories import write_dataset
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.training_run import checkpoint_dir
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.data.tokens import TokenArray, sample_batch
from gpt_pipeline.training.loop import TrainConfig
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

TEXTS = ["the cat sat", "a dog ran", "the hat", "cats and dogs", "a", "the end", "hats off",
         'he said "run"', "the cat\nand the dog", "sat on a mat", "ran off"]


def _stories_file(path: Path, texts: list[str]) -> TableFile:
    import pyarrow as pa

    pq.write_table(pa.table({"text": pa.array(texts, pa.large_string())}), path, row_group_size=4)
    return TableFile(path)


def _random_lists(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(0, 12))).tolist() for _ in range(count)]


def _write(path: Path, lists: list[list[int]], vocab: int, percentage: float, batch: int):
    with DatasetWriter(path, len(lists), vocab, percentage) as writer:
        for start in range(0, len(lists), batch):
            part = TokenArray.from_lists(lists[start : start + batch], vocab)
            writer.write(part.tokens, part.offsets)
    return writer.result


def _assert_same_arrays(actual: TokenArray, expected: TokenArray) -> None:
    assert actual.tokens.dtype == expected.tokens.dtype
    np.testing.assert_array_equal(actual.tokens, expected.tokens)
    np.testing.assert_array_equal(actual.offsets, expected.offsets)


# --- the streamed Parquet file and its companion -------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1, 3, 4, 100])
def test_streamed_dataset_equals_the_table_stored_before(tmp_path, batch_rows) -> None:
    tokenizer = BPETokenizer.train(TEXTS, 40)
    stories = _stories_file(tmp_path / "raw.parquet", TEXTS)
    table_file, stats = write_dataset(tokenizer, stories, DatasetConfig(0.7), tmp_path / "d.parquet", batch_rows)

    before = tmp_path / "before.parquet"  # what tokenized_dataset stored until now
    pq.write_table(build_dataset_table(tokenizer.encode_batch(TEXTS), tokenizer.vocab_size, 0.7), before)
    streamed, expected = pq.read_table(table_file.path), pq.read_table(before)
    assert streamed.schema.remove_metadata() == expected.schema.remove_metadata()
    assert streamed.equals(expected)
    assert streamed["split"].to_pylist() == ["train"] * 7 + ["test"] * 4  # floor(11 * 0.7) = 7
    assert pq.ParquetFile(table_file.path).num_row_groups == math.ceil(len(TEXTS) / batch_rows)
    assert {k: stats[k] for k in dataset_stats(expected)} == dataset_stats(expected)
    assert stats["encoding_seconds"] > 0

    train, test = load_splits(TableFile.stored_at(table_file.path))  # memory-mapped, read-only
    assert isinstance(train.tokens, np.memmap) and not train.tokens.flags.writeable
    expected_train, expected_test = dataset_splits(expected)
    _assert_same_arrays(train, expected_train)
    _assert_same_arrays(test, expected_test)


@pytest.mark.parametrize(("vocab", "dtype"), [(300, np.uint16), (70_000, np.uint32)])
def test_batches_straddling_the_split_and_empty_stories(tmp_path, vocab, dtype) -> None:
    lists = _random_lists(57, vocab) + [[]]  # one story without tokens, last
    expected = build_dataset_table(lists, vocab, 0.8)  # floor(58 * 0.8) = 46 train
    for batch in (1, 5, 46, 47, 58):
        path = tmp_path / f"d{batch}.parquet"
        table_file, stats = _write(path, lists, vocab, 0.8, batch)
        assert pq.read_table(path).equals(expected)
        assert stats["train_stories"] == 46 and stats["min_story_tokens"] == 0
        arrays = load_file(table_file.companions[ARRAYS])  # a plain safetensors file
        assert arrays["train_tokens"].dtype == dtype and arrays["test_offsets"][-1] == len(arrays["test_tokens"])
        train, test = open_token_arrays(TableFile.stored_at(path))
        expected_train, expected_test = dataset_splits(expected)
        _assert_same_arrays(train, expected_train)
        _assert_same_arrays(test, expected_test)


def test_writer_refuses_what_it_cannot_store(tmp_path) -> None:
    with pytest.raises(DataError, match=r"token id 300 is outside the vocabulary \[0, 300\)"):
        with DatasetWriter(tmp_path / "a.parquet", 2, 300, 0.5) as writer:
            writer.write(np.array([1, 300]), np.array([0, 1, 2]))
    with pytest.raises(DataError, match="1 stories were written, not the announced 2"):
        with DatasetWriter(tmp_path / "b.parquet", 2, 300, 0.5) as writer:
            writer.write(np.array([1]), np.array([0, 1]))
    with pytest.raises(DataError, match="more than the announced 2 stories"):
        with DatasetWriter(tmp_path / "c.parquet", 2, 300, 0.5) as writer:
            writer.write(np.array([1, 2, 3]), np.array([0, 1, 2, 3]))
    with pytest.raises(DataError, match="training_percentage=0.1 leaves the train split empty"):
        DatasetWriter(tmp_path / "d.parquet", 2, 300, 0.1)
    assert not (tmp_path / "d.parquet").exists()  # checked before any file is made


def test_unseen_character_names_the_story_across_batches(tmp_path) -> None:
    tokenizer = BPETokenizer.train(TEXTS, 40)
    stories = _stories_file(tmp_path / "raw.parquet", TEXTS[:5] + ["a \u2603"] + TEXTS[5:])
    with pytest.raises(ValueError, match="^story 5: .*'\u2603'"):
        write_dataset(tokenizer, stories, DatasetConfig(0.7), tmp_path / "d.parquet", batch_rows=2)


def test_stale_or_foreign_companion_is_not_used(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    _write(path, _random_lists(20, 300, seed=1), 300, 0.5, 6)
    other = build_dataset_table(_random_lists(20, 300, seed=2), 300, 0.5)
    pq.write_table(other, path)  # a Parquet file written by someone else, old companion beside it
    train, test = load_splits(TableFile.stored_at(path))
    assert not isinstance(train.tokens, np.memmap)
    expected_train, expected_test = dataset_splits(other)
    _assert_same_arrays(train, expected_train)
    _assert_same_arrays(test, expected_test)

    newer = tmp_path / "newer.parquet"  # a companion from another write of the same name
    _write(newer, _random_lists(20, 300, seed=3), 300, 0.5, 6)
    _write(path, _random_lists(20, 300, seed=4), 300, 0.5, 6)
    (tmp_path / f"newer.{ARRAYS}").replace(tmp_path / f"d.{ARRAYS}")
    assert open_token_arrays(TableFile.stored_at(path)) is None


def test_damaged_companion_is_an_error_naming_it(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    table_file, _ = _write(path, _random_lists(20, 300), 300, 0.5, 6)
    companion = table_file.companions[ARRAYS]
    with open(companion, "rb+") as handle:
        handle.truncate(companion.stat().st_size - 2)
    with pytest.raises(DataError, match=f"{companion.name}: tensor 'test_tokens' .* does not fit"):
        load_splits(TableFile.stored_at(path))


# --- what training does with memory-mapped splits ------------------------------------------------


def test_gates_baseline_and_fingerprint_on_memory_maps(tmp_path, monkeypatch) -> None:
    lists = _random_lists(300, 50, seed=5)
    path = tmp_path / "d.parquet"
    _write(path, lists, 50, 0.9, 64)
    mapped = load_splits(TableFile.stored_at(path))
    loaded = tuple(TokenArray(np.array(s.tokens), np.array(s.offsets)) for s in mapped)

    gate = quality.token_ids_in_vocab(TableFile(path), 50)  # streamed over the Parquet batches
    assert gate.passed and gate.figures["tokens"] == sum(map(len, lists))
    table_max = max(max(s) for s in lists if s)
    failed = quality.token_ids_in_vocab(TableFile(path), table_max)
    assert not failed.passed and f"token id {table_max} is not below" in failed.description

    baseline = quality.unigram_loss(*loaded, 50)
    monkeypatch.setattr(quality, "_CHUNK", 7)  # many chunks, one ragged
    assert quality.unigram_loss(*mapped, 50) == pytest.approx(baseline, rel=1e-12)

    model = GPTConfig(vocab_size=50, embedding_size=8, context_length=4, head_count=2, block_count=1)
    config = TrainConfig(device="cpu")
    folder = checkpoint_dir(model, config, *mapped)  # hashed in chunks: same data, same folder
    assert folder == checkpoint_dir(model, config, *loaded)
    assert folder != checkpoint_dir(model, config, *loaded[::-1])

    for split_mapped, split_loaded in zip(mapped, loaded):
        first = sample_batch(split_mapped, 8, 4, torch.Generator().manual_seed(3))
        second = sample_batch(split_loaded, 8, 4, torch.Generator().manual_seed(3))
        assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_trained_model_materializes_from_the_memory_mapped_dataset(isolated_storage) -> None:
    data, _ = isolated_storage
    resources = {"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()}
    keys = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model"]
    ops = {key: TINY_RUN_CONFIG["ops"][key] for key in keys}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(ASSETS, selection=keys, resources=resources, run_config={"ops": ops}, instance=with_default_variant(instance),
                            partition_key="default")  # trained_model's only variant
    assert result.success

    stored = TableFile.stored_at(data / "tokenized_dataset.parquet")
    assert sorted(stored.companions) == [ARRAYS]
    train, test = load_splits(stored)
    assert isinstance(train.tokens, np.memmap) and isinstance(test.offsets, np.memmap)
    table = pq.read_table(stored.path)
    for mapped, expected in zip((train, test), dataset_splits(table)):
        _assert_same_arrays(mapped, expected)
    (event,) = result.asset_materializations_for_node("tokenized_dataset")
    assert event.metadata["length_stats"].value == dataset_stats(table)
    assert event.metadata[ARRAYS].value == str(stored.companions[ARRAYS])
    assert len(event.metadata["content_digest"].value) == 64
    leftovers = list((data / ".scratch").rglob("*"))
    assert leftovers == []  # files moved into place, the stages' scratch folders removed

    # trained_model reads the companion: damaged, it fails naming it (the Parquet file is intact)
    companion = stored.companions[ARRAYS]
    with open(companion, "rb+") as handle:
        handle.truncate(companion.stat().st_size - 2)
    again = dg.materialize(ASSETS, selection=["trained_model"], resources=resources,
                           run_config={"ops": {"trained_model": ops["trained_model"]}}, instance=with_default_variant(instance),
                           raise_on_error=False, partition_key="default")
    assert not again.success
    (failure,) = [e for e in again.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"{ARRAYS}: tensor 'test_tokens'" in failure.step_failure_data.error.message


# --- training memory against corpus size ----------------------------------------------------------


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_memory.py"
    spec = importlib.util.spec_from_file_location("bench_train_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_memory_does_not_grow_with_the_token_data(tmp_path) -> None:
    bench = _bench()
    small, large = (bench.run_size(mb, 4, tmp_path, fingerprint=False) for mb in (2, 80))
    assert small["memory_mapped"] and large["memory_mapped"]
    data_growth = large["data_bytes"] - small["data_bytes"]  # about 78 MB of tokens
    anon_growth = large["anon_growth"] - small["anon_growth"]
    # Loaded, the tokens alone would add data_growth (a copy more for the Parquet file); mapped,
    # only per-story indices remain (about 25 bytes per story: 0.1 MB per 2 MB of tokens here)
    # and torch's own allocations, which differ by up to about 11 MB between two runs (measured),
    # so the data must grow well beyond that for the comparison to mean anything.
    assert anon_growth < 0.25 * data_growth, (small, large)
