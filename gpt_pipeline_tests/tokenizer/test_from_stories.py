"""The tokenizer step (``tokenizer.from_stories``): trained on a story file in batches, it learns exactly
``BPETokenizer.train``'s merges and reports the held-out compression without a second pass."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.data.splits import split_point
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.tokenizer.from_stories import chars_per_token, train_tokenizer


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return generate_stories(300, seed=11)


def test_train_tokenizer_from_a_file_matches_the_list(stories, tmp_path) -> None:
    path = tmp_path / "stories.parquet"
    pq.write_table(pa.table({"text": pa.array(stories, pa.large_string())}), path, row_group_size=64)
    from_file, file_stats = train_tokenizer(TableFile(path), TokenizerConfig(400), batch_rows=50)
    whole, whole_stats = train_tokenizer(path, TokenizerConfig(400))  # a path, one batch
    from_list = BPETokenizer.train(stories, 400)
    assert from_file == whole == from_list
    held_out = stories[split_point(len(stories), 0.9):]
    assert file_stats["chars_per_token_test"] == whole_stats["chars_per_token_test"]
    assert file_stats["chars_per_token_test"] == chars_per_token(from_list, held_out)  # exact, not approximate
    assert file_stats["longest_tokens"] == whole_stats["longest_tokens"]
    assert (file_stats["vocab_size"], file_stats["merges"]) == (400, 400 - file_stats["alphabet_size"])


def test_bad_vocab_size_fails_before_reading_the_stories(tmp_path) -> None:
    missing = tmp_path / "never-read.parquet"  # a pass over the stories would fail on this file
    with pytest.raises(ValueError, match="vocab_size must be a positive integer, got 0"):
        train_tokenizer(missing, TokenizerConfig(0))
