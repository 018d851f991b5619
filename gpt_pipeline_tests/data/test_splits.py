"""Tests for gpt_pipeline.data.splits: reading stories, the gpt-rs split and the tokenized dataset."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.data.splits import (
    SPLIT_COLUMN,
    TOKENS_COLUMN,
    DataError,
    build_dataset_table,
    dataset_splits,
    dataset_stats,
    split_point,
)
from gpt_pipeline.data.story_files import read_texts
from gpt_pipeline.storage import atomic_write
from gpt_pipeline.data.tokens import TokenArray


def write_parquet(path, columns: dict, schema: pa.Schema | None = None):
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


# --- read_texts --------------------------------------------------------------------------------


def test_read_texts_first_column_drops_null_and_empty(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {
        "story": ["Once a cat sat.", None, "", "A dog ran.", " ", None, "\n"],
        "id": [1, 2, 3, 4, 5, 6, 7],
    })
    frame, stats = read_texts(path)
    assert frame.columns == ["text"] and frame.schema["text"] == pl.String
    # Whitespace is text (gpt-rs keeps it); only null and "" are dropped, in file order.
    assert frame["text"].to_list() == ["Once a cat sat.", "A dog ran.", " ", "\n"]
    assert stats == {"rows_read": 7, "null_dropped": 2, "empty_dropped": 1, "rows_kept": 4,
                     "source_column": "story"}


def test_read_texts_named_column(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {"id": [1, 2], "body": ["a", "b"]})
    frame, stats = read_texts(path, text_column="body")
    assert frame["text"].to_list() == ["a", "b"] and stats["source_column"] == "body"


@pytest.mark.parametrize("arrow_type", [pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_read_texts_other_text_encodings(tmp_path, arrow_type) -> None:
    values = pa.array(["x", None, "y"]).cast(arrow_type)
    path = write_parquet(tmp_path / "s.parquet", {"t": values})
    frame, stats = read_texts(path)
    assert frame["text"].to_list() == ["x", "y"] and frame.schema["text"] == pl.String
    assert stats["null_dropped"] == 1


def test_read_texts_several_row_groups(tmp_path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": [f"story {i}" for i in range(25)]}), path, row_group_size=10)
    frame, stats = read_texts(path)
    assert frame["text"].to_list() == [f"story {i}" for i in range(25)]
    assert stats["rows_kept"] == 25


def test_missing_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "stories.parquet"
    with pytest.raises(DataError, match=re.escape(str(missing))) as info:
        read_texts(missing)
    assert "not found" in str(info.value)


def test_directory_is_not_a_file(tmp_path) -> None:
    with pytest.raises(DataError, match=f"not a file: {re.escape(str(tmp_path))}"):
        read_texts(tmp_path)


@pytest.mark.parametrize("content", [b"text,id\nhello,1\n", b"", b"PAR1 truncated"])
def test_not_a_parquet_file(tmp_path, content: bytes) -> None:
    path = tmp_path / "stories.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"not a Parquet file: {re.escape(str(path))}") as info:
        read_texts(path)
    assert "\n" not in str(info.value)


def test_truncated_parquet_file(tmp_path) -> None:
    good = write_parquet(tmp_path / "good.parquet", {"text": ["a story"] * 100})
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(str(cut))):
        read_texts(cut)


def test_parquet_with_no_rows(tmp_path) -> None:
    path = write_parquet(tmp_path / "e.parquet", {"text": pa.array([], pa.string())})
    with pytest.raises(DataError, match=f"no rows: {re.escape(str(path))}"):
        read_texts(path)


def test_named_column_that_does_not_exist(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {"id": [1], "body": ["a"]})
    with pytest.raises(DataError, match=r"'story' not found .*\['id', 'body'\]"):
        read_texts(path, text_column="story")


def test_first_column_not_text(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {"id": [1, 2], "text": ["a", "b"]})
    with pytest.raises(DataError, match=r"first column 'id' .* is not text but int64"):
        read_texts(path)


def test_named_column_not_text(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {"text": ["a"], "score": [0.5]})
    with pytest.raises(DataError, match=r"named column 'score' .* is not text but double"):
        read_texts(path, text_column="score")
    binary = write_parquet(tmp_path / "b.parquet", {"raw": pa.array([b"a"], pa.binary())})
    with pytest.raises(DataError, match=r"'raw' .* is not text but binary"):
        read_texts(binary)


def test_only_null_or_empty_text(tmp_path) -> None:
    path = write_parquet(tmp_path / "s.parquet", {"story": pa.array([None, "", None], pa.string())})
    with pytest.raises(DataError, match=r"'story' .* only null or empty text"):
        read_texts(path)


def test_errors_are_value_errors() -> None:
    assert issubclass(DataError, ValueError)


# --- split_point -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p", "expected"),
    [(10, 0.9, 9), (2, 0.5, 1), (5511, 0.9, 4959), (3, 0.9, 2), (7, 0.5, 3),
     (100, 0.29, 28)],  # 100 * 0.29 == 28.999999999999996 in float64: floor gives 28, as gpt-rs
)
def test_split_point_known_answers(n: int, p: float, expected: int) -> None:
    assert split_point(n, p) == expected


@pytest.mark.parametrize("p", [0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, -math.inf])
def test_split_point_rejects_percentages_outside_0_1(p) -> None:
    with pytest.raises(DataError, match=re.escape(repr(p))):
        split_point(10, p)


@pytest.mark.parametrize(("n", "p"), [(1, 0.9), (5, 0.1), (0, 0.5), (9, 0.11)])
def test_split_point_rejects_an_empty_train_split(n: int, p: float) -> None:
    with pytest.raises(DataError, match=f"training_percentage={p} leaves the train split empty "
                                        f"for {n} entries"):
        split_point(n, p)


# --- the dataset table -------------------------------------------------------------------------


def test_build_dataset_table_known_answer() -> None:
    lists = [[i, i + 1] for i in range(10)]
    table = build_dataset_table(lists, vocab_size=16, training_percentage=0.9)
    assert table.column_names == [TOKENS_COLUMN, SPLIT_COLUMN]
    assert table.schema.field(TOKENS_COLUMN).type == pa.list_(pa.uint16())
    assert table.schema.field(SPLIT_COLUMN).type == pa.string()
    assert table[SPLIT_COLUMN].to_pylist() == ["train"] * 9 + ["test"]
    assert table[TOKENS_COLUMN].to_pylist() == lists
    train, test = dataset_splits(table)  # views of the table's memory, not copies
    values = np.asarray(table[TOKENS_COLUMN].chunk(0).values)
    assert np.shares_memory(train.tokens, values) and np.shares_memory(test.tokens, values)
    assert train.tokens.tolist() == [t for pair in lists[:9] for t in pair]


@pytest.mark.parametrize(("vocab_size", "arrow_type", "numpy_type"),
                         [(2048, pa.uint16(), np.uint16), (65536, pa.uint16(), np.uint16),
                          (65537, pa.uint32(), np.uint32), (100_000, pa.uint32(), np.uint32)])
def test_token_dtype_follows_vocab_size(vocab_size, arrow_type, numpy_type) -> None:
    top = vocab_size - 1
    table = build_dataset_table([[0, top], [top], [1]], vocab_size, 0.5)
    assert table.schema.field(TOKENS_COLUMN).type == pa.list_(arrow_type)
    train, test = dataset_splits(table)
    assert train.tokens.dtype == numpy_type and train.tokens.tolist() == [0, top]
    assert test.tokens.tolist() == [top, 1] and test.offsets.tolist() == [0, 1, 2]


def test_build_dataset_table_rejects_bad_ids_and_vocab() -> None:
    with pytest.raises(DataError, match=r"token id 300 .*\[0, 256\)"):
        build_dataset_table([[1, 300], [2]], 256, 0.5)
    with pytest.raises(DataError, match="token id -1"):
        build_dataset_table([[1], [-1]], 256, 0.5)
    with pytest.raises(DataError, match="vocab_size must be >= 1, got 0"):
        build_dataset_table([[0], [0]], 0, 0.5)
    with pytest.raises(DataError, match="training_percentage"):
        build_dataset_table([[1], [2]], 256, 1.0)


def test_round_trip_through_a_parquet_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    lists = [rng.integers(0, 3000, size=int(rng.integers(0, 40))).tolist() for _ in range(57)]
    table = build_dataset_table(lists, vocab_size=3000, training_percentage=0.8)
    path = atomic_write(tmp_path / "dataset.parquet",
                        lambda tmp: pq.write_table(table, tmp, row_group_size=10))
    expected_train = TokenArray.from_lists(lists[:45], 3000)  # floor(57 * 0.8) == 45
    expected_test = TokenArray.from_lists(lists[45:], 3000)
    for loaded in (pq.read_table(path), pl.read_parquet(path)):
        train, test = dataset_splits(loaded)
        assert train.tokens.dtype == np.uint16
        np.testing.assert_array_equal(train.tokens, expected_train.tokens)
        np.testing.assert_array_equal(train.offsets, expected_train.offsets)
        np.testing.assert_array_equal(test.tokens, expected_test.tokens)
        np.testing.assert_array_equal(test.offsets, expected_test.offsets)


def test_dataset_splits_of_sliced_and_chunked_tables() -> None:
    table = build_dataset_table([[1, 2], [3], [4, 5, 6], [7], [8, 9]], 16, 0.6)
    # A slice: its list offsets start at 2, and .values still holds the whole child array.
    train, test = dataset_splits(table.slice(1, 3))
    assert (train.tokens.tolist(), train.offsets.tolist()) == ([3, 4, 5, 6], [0, 1, 4])
    assert (test.tokens.tolist(), test.offsets.tolist()) == ([7], [0, 1])
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 1), table.slice(3)])
    assert chunked[TOKENS_COLUMN].num_chunks == 3
    train, test = dataset_splits(chunked)
    assert (train.tokens.tolist(), train.offsets.tolist()) == ([1, 2, 3, 4, 5, 6], [0, 2, 3, 6])
    assert (test.tokens.tolist(), test.offsets.tolist()) == ([7, 8, 9], [0, 1, 3])
    assert train.story(2).tolist() == [4, 5, 6]


def test_dataset_splits_with_train_rows_not_first() -> None:
    table = pa.table({TOKENS_COLUMN: pa.array([[1], [2, 3], [4], [5, 6]], pa.list_(pa.uint16())),
                      SPLIT_COLUMN: ["test", "train", "test", "train"]})
    train, test = dataset_splits(table)
    assert (train.tokens.tolist(), train.offsets.tolist()) == ([2, 3, 5, 6], [0, 2, 4])
    assert (test.tokens.tolist(), test.offsets.tolist()) == ([1, 4], [0, 1, 2])


def test_dataset_splits_rejects_bad_tables() -> None:
    table = build_dataset_table([[1], [2]], 16, 0.5)
    with pytest.raises(DataError, match=r"no 'split' column; columns: \['tokens'\]"):
        dataset_splits(table.select([TOKENS_COLUMN]))
    odd = table.set_column(1, SPLIT_COLUMN, pa.array(["train", "valid"]))
    with pytest.raises(DataError, match=r"other than train/test: \['valid'\]"):
        dataset_splits(odd)
    signed = pa.table({TOKENS_COLUMN: pa.array([[1], [2]], pa.list_(pa.int64())),
                       SPLIT_COLUMN: ["train", "test"]})
    with pytest.raises(DataError, match="uint16 or uint32, not int64"):
        dataset_splits(signed)


def test_dataset_stats_known_answer() -> None:
    table = build_dataset_table([[1, 2], [], [3, 4, 5, 6], [7], [8, 9, 10]], 16, 0.6)
    assert dataset_stats(table) == {
        "stories": 5, "tokens": 10,
        "train_stories": 3, "train_tokens": 6,
        "test_stories": 2, "test_tokens": 4,
        "min_story_tokens": 0, "mean_story_tokens": 2.0, "max_story_tokens": 4,
    }
