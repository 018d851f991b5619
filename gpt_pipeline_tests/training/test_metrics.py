"""gpt_pipeline.training.metrics: bits per character from a stored dataset's known counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpt_pipeline.data.dataset_files import load_splits, split_characters
import pyarrow as pa

from gpt_pipeline.data.config import DatasetConfig
from gpt_pipeline.data.encode_stories import write_dataset
from gpt_pipeline.data.story_files import write_texts
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.training.metrics import bits_per_character, characters_of, significant, token_characters


def test_known_answer_from_a_stored_dataset(tmp_path):
    """Ten stories "aaaa" train, two "aaaa aa" test; the tokens "aaaa", " ", "aa": the test split is
    6 tokens for 14 characters, the train split 10 tokens for 40. A loss of ln 2 nats per token
    (one bit) is then 6/14 and 10/40 bits per character."""
    tokenizer = BPETokenizer.train(["aaaa", "aaaa aa"], 4)
    assert [tokenizer.token_text(i) for i in range(4)] == [" ", "a", "aa", "aaaa"]
    stories = ["aaaa"] * 10 + ["aaaa aa"] * 2
    story_file = write_texts(tmp_path / "s.parquet", [pa.array(stories)])
    table_file, stats = write_dataset(tokenizer, story_file, DatasetConfig(training_percentage=10 / 12),
                                      tmp_path / "d.parquet")
    assert split_characters(table_file) == {"train": 40, "test": 14}
    assert (stats["train_tokens"], stats["test_tokens"], stats["test_characters"]) == (10, 6, 14)
    train, test = load_splits(table_file)
    assert bits_per_character(math.log(2), len(test.tokens), 14) == 6 / 14
    assert bits_per_character(math.log(2), len(train.tokens), 40) == 0.25
    assert bits_per_character(2.0, 6, 14) == pytest.approx(2.0 / math.log(2) * 6 / 14, rel=1e-15)
    lengths = token_characters([tokenizer.token_text(i) for i in range(tokenizer.vocab_size)])
    assert (characters_of(train.tokens, lengths), characters_of(test.tokens, lengths)) == (40, 14)


def test_a_dataset_written_without_character_counts_has_none(tmp_path):
    import pyarrow.parquet as pq

    from gpt_pipeline.data.splits import build_dataset_table
    from gpt_pipeline.data.table_file import TableFile

    path = tmp_path / "old.parquet"
    pq.write_table(build_dataset_table([[1, 2], [3], [4, 5]], 8, 0.7), path)
    assert split_characters(TableFile(path)) is None


def test_bad_counts_and_rounding():
    with pytest.raises(ValueError, match="tokens and characters must be >= 0, got -1 and 3"):
        bits_per_character(1.0, -1, 3)
    assert bits_per_character(float("inf"), 3, 7) is None
    assert significant(2.718281828) == 2.718 and significant(-1234567.0) == -1235000.0
    assert math.isnan(significant(float("nan")))
    assert characters_of(np.zeros(0, np.uint16), np.array([1, 2])) == 0
