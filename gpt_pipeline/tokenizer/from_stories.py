"""The tokenizer step: gpt-rs's BPE tokenizer trained on a story file, read in batches.

``train_tokenizer`` reads the ``text`` column of a story file (``data.story_files.write_stories``'s)
a batch at a time and keeps only piece counts (``pieces.PieceCounter``), so no corpus size has to
fit in memory; the merges are the same as ``BPETokenizer.train`` on all stories at once. The
stories of the held-out tail that the default split tests on are counted apart as well, so that
the tokenizer's compression there (``chars_per_token_test``) comes from their distinct pieces
without a second pass over the text. The ``bpe_tokenizer`` asset and ``gpt-pipeline tokenize``
both call it; storing the result is ``bundle``'s business.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from gpt_pipeline.data.config import DatasetConfig
from gpt_pipeline.data.splits import split_point
from gpt_pipeline.data.story_files import text_batches
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer.bpe import BPETokenizer
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.tokenizer.pieces import PieceCounter

HELD_OUT_PERCENTAGE = DatasetConfig().training_percentage  # the tail after it is the default test split


def train_tokenizer(
    stories: TableFile | str | os.PathLike, config: TokenizerConfig, batch_rows: int | None = None
) -> tuple[BPETokenizer, dict[str, Any]]:
    """Train gpt-rs's tokenizer on every story of a story file, ``batch_rows`` at a time.

    Returns the tokenizer and facts: ``vocab_size``, ``alphabet_size``, ``merges``,
    ``training_seconds``, ``chars_per_token_test`` (compression on the default test split) and
    the 20 ``longest_tokens``.

    Example:
        >>> import tempfile, pyarrow as pa
        >>> from pathlib import Path
        >>> from gpt_pipeline.data.story_files import write_texts
        >>> path = write_texts(Path(tempfile.mkdtemp()) / "s.parquet", [pa.array(["the cat", "the hat"])])
        >>> tokenizer, facts = train_tokenizer(path, TokenizerConfig(vocab_size=9))
        >>> tokenizer.merges, facts["longest_tokens"][:3]
        ([(5, 4), (6, 3), (1, 5)], ['the', 'th', 'at'])
    """
    started = time.perf_counter()
    table_file = stories if isinstance(stories, TableFile) else TableFile(stories)
    rows = table_file.num_rows
    tail_start = split_point(rows, HELD_OUT_PERCENTAGE) if rows > 1 else 0
    counts, tail = PieceCounter(), PieceCounter()
    row = 0
    for batch in text_batches(table_file, batch_rows):
        head_rows = min(max(tail_start - row, 0), len(batch))
        counts.add(batch[:head_rows])
        tail.add(batch[head_rows:])
        row += len(batch)
    tail_pieces = tail.frame()
    counts.update(tail)
    tokenizer = BPETokenizer.train_from_counts(counts.counts(), config.vocab_size)
    seconds = time.perf_counter() - started
    longest = sorted(range(tokenizer.vocab_size), key=lambda i: (-len(tokenizer.token_text(i)), i))[:20]
    facts = {
        "vocab_size": tokenizer.vocab_size,
        "alphabet_size": len(tokenizer.alphabet),
        "merges": len(tokenizer.merges),
        "training_seconds": seconds,
        "chars_per_token_test": pieces_chars_per_token(tokenizer, tail_pieces),
        "longest_tokens": [tokenizer.token_text(i) for i in longest],
    }
    return tokenizer, facts


def chars_per_token(tokenizer: BPETokenizer, texts: Sequence[str]) -> float:
    """Characters per token over ``texts`` (characters the tokenizer never saw are skipped).

    Example:
        >>> tok = BPETokenizer.train(["aaaa"], 2)   # alphabet ['a'], one merge: 'aa'
        >>> chars_per_token(tok, ["aaaa"])
        2.0
    """
    encoded = tokenizer.encode_batch(list(texts), unknown="skip")
    tokens = sum(len(ids) for ids in encoded)
    chars = sum(len(text) for text in texts)
    return chars / tokens if tokens else 0.0


def pieces_chars_per_token(tokenizer: BPETokenizer, pieces: pl.DataFrame) -> float:
    """``chars_per_token`` of a corpus given by its piece counts (``PieceCounter.frame()``:
    ``piece``, ``n``): each distinct piece is encoded once (merges never cross pieces).

    Example:
        >>> tok = BPETokenizer.train(["aaaa"], 2)
        >>> pieces_chars_per_token(tok, pl.DataFrame({"piece": ["aaaa", "aaa"], "n": [2, 1]}))
        1.8333333333333333

        (2 x "aaaa" and "aaa": 11 characters in 2 x [aa, aa] and [aa, a], 6 tokens.)
    """
    if not len(pieces):
        return 0.0
    counts = pieces["n"].to_numpy()
    _, offsets = tokenizer.encode_flat(pieces["piece"], unknown="skip")
    tokens = int((np.diff(offsets) * counts).sum())
    chars = int((pieces["piece"].str.len_chars().to_numpy() * counts).sum())
    return chars / tokens if tokens else 0.0
