"""gpt-rs's train/test split and the tokenized dataset table.

This module owns the data formats after tokenization (story files are ``story_files.py``):

- the **tokenized dataset**: an Arrow table with a ``tokens`` column (list<uint16>, or
  list<uint32> when the vocabulary has more than 65,536 tokens) and a ``split`` column ("train" or
  "test"), where the first ``floor(n * training_percentage)`` stories train, as in gpt-rs;
- the conversion of that table into the flat ``TokenArray`` pairs that training samples from,
  without a Python loop over tokens, and ``load_splits``, which memory-maps them instead from
  the companion file the pipeline writes beside it (``gpt_pipeline.data.dataset_files``).

It does not read story files (``gpt_pipeline.data.story_files``), tokenize text (see ``gpt_pipeline.tokenizer``) and does not decide where files live
(see ``gpt_pipeline.storage``). Every bad input raises ``DataError`` (a ``ValueError``) with a
one-line message naming the problem and the offending value.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from gpt_pipeline.data.tokens import TokenArray, token_dtype

TEXT_COLUMN = "text"
TOKENS_COLUMN = "tokens"
SPLIT_COLUMN = "split"
TRAIN, TEST = "train", "test"


class DataError(ValueError):
    """A data file or data setting the pipeline cannot use; the message names the value."""


# --- the train/test split ----------------------------------------------------------------------


def split_point(num_entries: int, training_percentage: float) -> int:
    """Index where the test split starts: the first ``floor(n * p)`` entries train (gpt-rs).

    The product is taken in float64 as gpt-rs does, so ``split_point(100, 0.29)`` is 28, not 29.

    Example:
        >>> split_point(10, 0.9), split_point(5511, 0.9), split_point(3, 0.5)
        (9, 4959, 1)
    """
    p = training_percentage
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p < 1):
        raise DataError(f"training_percentage must be between 0 and 1 (exclusive), got {p!r}")
    point = math.floor(num_entries * p)  # < num_entries for every p < 1 (float64, n < 2**53)
    if point == 0:
        raise DataError(
            f"training_percentage={p} leaves the train split empty for {num_entries} entries"
        )
    return point


# --- the tokenized dataset ---------------------------------------------------------------------


def build_dataset_table(
    token_lists: list[list[int]], vocab_size: int, training_percentage: float
) -> pa.Table:
    """The tokenized dataset: ``tokens`` list<uint16|uint32> and ``split`` ("train"/"test").

    Example:
        >>> t = build_dataset_table([[1, 2], [3], [4, 5, 6], [7]], 8, 0.75)
        >>> t.schema.field("tokens").type, t["split"].to_pylist()
        (ListType(list<item: uint16>), ['train', 'train', 'train', 'test'])
    """
    if vocab_size < 1:
        raise DataError(f"vocab_size must be >= 1, got {vocab_size}")
    n = len(token_lists)
    point = split_point(n, training_percentage)
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(
        itertools.chain.from_iterable(token_lists), dtype=np.int64, count=int(offsets[-1])
    )
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        bad = int(flat.min()) if flat.min() < 0 else int(flat.max())
        raise DataError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    values = pa.array(flat.astype(token_dtype(vocab_size)))
    if offsets[-1] <= np.iinfo(np.int32).max:
        tokens = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    else:  # more than 2**31 - 1 tokens in all: 64-bit offsets
        tokens = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    split = pa.array([TRAIN] * point + [TEST] * (n - point), pa.string())
    return pa.table({TOKENS_COLUMN: tokens, SPLIT_COLUMN: split})


def _as_arrow(table: pa.Table | pl.DataFrame) -> pa.Table:
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    for name in (TOKENS_COLUMN, SPLIT_COLUMN):
        if name not in table.column_names:
            raise DataError(f"dataset has no {name!r} column; columns: {table.column_names}")
    return table


def _token_array(column: pa.ChunkedArray) -> TokenArray:
    # A list column (any slice, any chunking) as one flat token array plus story offsets.
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise DataError(f"{TOKENS_COLUMN!r} column must hold lists of token ids, not {column.type}")
    value_type = column.type.value_type
    if value_type not in (pa.uint16(), pa.uint32()):
        raise DataError(f"{TOKENS_COLUMN!r} column must hold uint16 or uint32, not {value_type}")
    if column.null_count:
        raise DataError(f"{TOKENS_COLUMN!r} column has {column.null_count} null entries")
    parts = [_chunk_tokens(chunk) for chunk in column.chunks] or [
        (np.zeros(0, value_type.to_pandas_dtype()), np.zeros(1, np.int64))
    ]
    if len(parts) == 1:  # one chunk (a Parquet file of one row group): views, no copy
        return TokenArray(tokens=parts[0][0], offsets=parts[0][1])
    # One chunk per row group: one copy, chunk by chunk (no 2**31 limit of list<> offsets).
    starts = np.cumsum([0] + [len(tokens) for tokens, _ in parts[:-1]])
    offsets = np.concatenate([parts[0][1][:1]] + [o[1:] + s for (_, o), s in zip(parts, starts)])
    return TokenArray(tokens=np.concatenate([tokens for tokens, _ in parts]), offsets=offsets)


def _chunk_tokens(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.asarray(lists.offsets, dtype=np.int64)  # [stories + 1], relative to the slice
    start, end = int(offsets[0]), int(offsets[-1])
    # .values ignores the array's slice; the offsets say which part of it this array covers.
    flat = lists.values.slice(start, end - start)
    if flat.null_count:
        raise DataError(f"{TOKENS_COLUMN!r} column has {flat.null_count} null token ids")
    return flat.to_numpy(zero_copy_only=False), offsets - start  # [tokens] uint16|uint32, [n + 1]


def dataset_splits(table: pa.Table | pl.DataFrame) -> tuple[TokenArray, TokenArray]:
    """The train and test stories of a dataset table as two ``TokenArray``s.

    When the train stories come first (as ``build_dataset_table`` writes them) the token arrays
    are views of the table's memory, not copies; they are read-only.

    Example:
        >>> train, test = dataset_splits(build_dataset_table([[1, 2], [3], [4, 5]], 8, 0.7))
        >>> train.tokens.tolist(), train.offsets.tolist(), test.tokens.tolist()
        ([1, 2, 3], [0, 2, 3], [4, 5])
    """
    table = _as_arrow(table)
    split = table.column(SPLIT_COLUMN).cast(pa.string())
    is_train = pc.equal(split, TRAIN)
    is_test = pc.equal(split, TEST)
    unknown = pc.invert(pc.or_kleene(is_train, is_test))
    if pc.any(unknown.fill_null(True)).as_py():
        values = sorted(set(split.to_pylist()) - {TRAIN, TEST}, key=str)
        raise DataError(f"{SPLIT_COLUMN!r} column holds values other than train/test: {values}")
    tokens = table.column(TOKENS_COLUMN)
    train_rows = is_train.to_numpy(zero_copy_only=False)  # [stories] bool
    count = int(train_rows.sum())
    if train_rows[:count].all():  # gpt-rs's layout, train first: zero-copy slices
        return _token_array(tokens.slice(0, count)), _token_array(tokens.slice(count))
    return _token_array(tokens.filter(is_train)), _token_array(tokens.filter(is_test))


def dataset_stats(table: pa.Table | pl.DataFrame) -> dict:
    """Stories and tokens per split, and the shortest, mean and longest story (in tokens).

    Example:
        >>> s = dataset_stats(build_dataset_table([[1, 2], [3], [4, 5, 6]], 8, 0.7))
        >>> s["train_stories"], s["test_tokens"], s["min_story_tokens"], s["mean_story_tokens"]
        (2, 3, 1, 2.0)
    """
    train, test = dataset_splits(table)
    lengths = np.concatenate([train.lengths, test.lengths])
    return {
        "stories": len(lengths),
        "tokens": int(lengths.sum()),
        "train_stories": len(train),
        "train_tokens": int(train.lengths.sum()),
        "test_stories": len(test),
        "test_tokens": int(test.lengths.sum()),
        "min_story_tokens": int(lengths.min()) if len(lengths) else 0,
        "mean_story_tokens": float(lengths.mean()) if len(lengths) else 0.0,
        "max_story_tokens": int(lengths.max()) if len(lengths) else 0,
    }
