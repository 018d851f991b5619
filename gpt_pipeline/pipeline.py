"""The steps of the gpt-rs lineage as plain functions, shared by the Dagster assets and the CLI.

Each function takes plain values (texts, a tokenizer, a model, a config) and returns plain values
plus a dict of facts worth reporting. Nothing here reads Dagster config, writes asset files or
logs to MLflow: the orchestration layer does that around these calls.

The steps:
    load_stories      Parquet file (or the embedded corpus) -> DataFrame with one ``text`` column
    write_stories     the same, streamed into a Parquet file batch by batch (any corpus size)
    train_tokenizer   texts or a story file -> BPETokenizer (gpt-rs's merge rules), streamed
    tokenize_stories  texts -> Arrow table of token lists with the train/test split
    write_tokenized_stories  the same, streamed into a Parquet file + memory-mappable token arrays
    (training.train)  token arrays -> trained GPT
    generate_samples  GPT + tokenizer + prompts -> DataFrame of generations
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.model.sampling import GenerationConfig  # noqa: F401 - used by callers
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES, iter_story_batches
from gpt_pipeline.data.splits import TEXT_COLUMN, build_dataset_table, split_point
from gpt_pipeline.data.story_files import TextStats, iter_texts, write_texts
from gpt_pipeline.data.dataset_files import DatasetWriter
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.pieces import PieceCounter, as_string_series

DEFAULT_CORPUS_SEED = StoriesConfig().seed
DEFAULT_VOCAB_SIZE = TokenizerConfig().vocab_size
DEFAULT_TRAINING_PERCENTAGE = DatasetConfig().training_percentage
TRAIN_BATCH_ROWS = 16_384  # stories per batch when the tokenizer reads a story file


def load_stories(
    path: str | None = None,
    text_column: str | None = None,
    num_stories: int = DEFAULT_NUM_STORIES,
    seed: int = DEFAULT_CORPUS_SEED,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Stories from a Parquet file, or the embedded corpus when ``path`` is None, in memory.

    Returns a DataFrame with one ``text`` column (null and empty entries dropped) and facts:
    source, rows read, rows dropped and kept. For corpora of any size, ``write_stories``
    streams the same stories into a file instead.
    """
    stats = TextStats()
    source, batches = _story_batches(path, text_column, num_stories, seed, stats)
    column = pa.chunked_array(list(batches), pa.large_string())
    frame = pl.DataFrame({TEXT_COLUMN: pl.Series(TEXT_COLUMN, column)}).cast({TEXT_COLUMN: pl.String})
    return frame, {"source": source, **stats.summary()}


def write_stories(
    destination: str | os.PathLike,
    path: str | None = None,
    text_column: str | None = None,
    num_stories: int = DEFAULT_NUM_STORIES,
    seed: int = DEFAULT_CORPUS_SEED,
) -> dict[str, Any]:
    """``load_stories``'s stories streamed into the Parquet file ``destination`` (one
    large_string ``text`` column, one row group per batch), never all in memory.

    The source is checked before ``destination`` is touched. Returns ``load_stories``'s facts
    plus ``characters`` and ``first`` (the first story, for a preview).
    """
    stats = TextStats()
    source, batches = _story_batches(path, text_column, num_stories, seed, stats)
    write_texts(destination, batches)
    return {"source": source, **stats.summary(), "characters": stats.characters, "first": stats.first or ""}


def _story_batches(
    path: str | None, text_column: str | None, num_stories: int, seed: int, stats: TextStats
) -> tuple[str, Iterator[pa.Array]]:
    """The source's name and its stories in batches (counted into ``stats``); checks first."""
    if path:
        return str(path), iter_texts(path, text_column, stats)
    if isinstance(num_stories, bool) or not isinstance(num_stories, int) or num_stories < 1:
        raise ValueError(f"num_stories must be at least 1, got {num_stories}")
    batches = iter_story_batches(num_stories, seed)
    return f"embedded corpus (seed {seed})", (stats.keep(pa.array(b, pa.large_string())) for b in batches)


def text_batches(stories: Sequence[str] | TableFile, batch_rows: int | None = None) -> Iterator[pl.Series]:
    """The texts of a list, or of the ``text`` column of a stored story file, in batches of
    ``batch_rows`` (default ``TRAIN_BATCH_ROWS``).

    Example:
        >>> [b.to_list() for b in text_batches(["a", "b", "c"], batch_rows=2)]
        [['a', 'b'], ['c']]
    """
    batch_rows = batch_rows or TRAIN_BATCH_ROWS
    if isinstance(stories, TableFile):
        for batch in stories.iter_batches([TEXT_COLUMN], batch_size=batch_rows):
            yield pl.Series(TEXT_COLUMN, batch.column(0)).cast(pl.String)
        return
    for start in range(0, len(stories), batch_rows):
        yield as_string_series(list(stories[start : start + batch_rows]))


def train_tokenizer(
    stories: Sequence[str] | TableFile, vocab_size: int, batch_rows: int | None = None
) -> tuple[BPETokenizer, dict[str, Any]]:
    """Train gpt-rs's tokenizer on every story; facts include the seconds it took and the
    compression (characters per token) on the held-out tail that the default split tests on.

    ``stories`` is a list of texts or a stored story file (``TableFile``, read ``batch_rows``
    at a time): only piece counts are kept, those of the held-out tail also apart, so that its
    compression comes from its distinct pieces without a second pass over the text.
    """
    started = time.perf_counter()
    rows = stories.num_rows if isinstance(stories, TableFile) else len(stories)
    tail_start = split_point(rows, DEFAULT_TRAINING_PERCENTAGE) if rows > 1 else 0
    counts, tail = PieceCounter(), PieceCounter()
    row = 0
    for batch in text_batches(stories, batch_rows):
        head_rows = min(max(tail_start - row, 0), len(batch))
        counts.add(batch[:head_rows])
        tail.add(batch[head_rows:])
        row += len(batch)
    tail_pieces = tail.frame()
    counts.update(tail)
    tokenizer = BPETokenizer.train_from_counts(counts.counts(), vocab_size)
    seconds = time.perf_counter() - started
    longest = sorted(range(tokenizer.vocab_size), key=lambda i: (-len(tokenizer.token_text(i)), i))[:20]
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "alphabet_size": len(tokenizer.alphabet),
        "merges": len(tokenizer.merges),
        "training_seconds": seconds,
        "chars_per_token_test": pieces_chars_per_token(tokenizer, tail_pieces),
        "longest_tokens": [tokenizer.token_text(i) for i in longest],
    }
    return tokenizer, stats


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


def tokenize_stories(
    tokenizer: BPETokenizer, texts: Sequence[str], training_percentage: float
) -> tuple[pa.Table, dict[str, Any]]:
    """Encode every story; the first ``training_percentage`` of them form the train split."""
    train_rows = split_point(len(texts), training_percentage)  # validates before the encode
    started = time.perf_counter()
    token_lists = tokenizer.encode_batch(list(texts))
    seconds = time.perf_counter() - started
    table = build_dataset_table(token_lists, tokenizer.vocab_size, training_percentage)
    lengths = [len(ids) for ids in token_lists]
    stats = {
        "stories": len(texts),
        "train_stories": train_rows,
        "test_stories": len(texts) - train_rows,
        "tokens": sum(lengths),
        "train_tokens": sum(lengths[:train_rows]),
        "test_tokens": sum(lengths[train_rows:]),
        "encoding_seconds": seconds,
    }
    return table, stats


ENCODE_BATCH_ROWS = 16_384  # stories encoded and written (one Parquet row group) at a time


def write_tokenized_stories(
    tokenizer: BPETokenizer,
    stories: Sequence[str] | TableFile,
    training_percentage: float,
    path: str | os.PathLike,
    batch_rows: int = ENCODE_BATCH_ROWS,
) -> tuple[TableFile, dict[str, Any]]:
    """``tokenize_stories`` streamed: encode ``batch_rows`` stories at a time into the Parquet
    file ``path`` and its memory-mappable token arrays (``gpt_pipeline.data.dataset_files``).

    ``stories`` is a list of texts or a stored story file (``TableFile``, its row count read
    from the footer). Returns the ``TableFile`` and facts: stories and tokens per split,
    ``encoding_seconds``, shortest / mean / longest story and the content ``digest``.
    """
    rows = stories.num_rows if isinstance(stories, TableFile) else len(stories)
    seconds, row = 0.0, 0
    with DatasetWriter(path, rows, tokenizer.vocab_size, training_percentage) as writer:
        for batch in text_batches(stories, batch_rows):
            started = time.perf_counter()
            try:
                ids, offsets = tokenizer.encode_flat(batch)
            except ValueError as error:  # "text i: ..." counts from this batch's first story
                raise ValueError(re.sub(r"^text (\d+):", lambda m: f"story {row + int(m[1])}:", str(error))) from None
            seconds += time.perf_counter() - started
            writer.write(ids, offsets, batch.str.len_chars().to_numpy())
            row += len(batch)
    table_file, facts = writer.result
    return table_file, {**facts, "encoding_seconds": seconds}


def progress_line(evaluation, total_steps: int) -> str:
    """One line of training progress for logs and the terminal.

    Example:
        >>> from gpt_pipeline.training.loop import Evaluation
        >>> progress_line(Evaluation(250, 3.21, 3.3, 5000.0, 60.0, 180.0), 1000)
        'step 250/1000: train loss 3.2100, test loss 3.3000, 5,000 tokens/s, elapsed 60 s, remaining 180 s'
    """
    speed = f"{evaluation.tokens_per_second:,.0f} tokens/s" if evaluation.tokens_per_second else "- tokens/s"
    remaining = evaluation.remaining_seconds
    return (
        f"step {evaluation.step}/{total_steps}: train loss {evaluation.train_loss:.4f}, "
        f"test loss {evaluation.test_loss:.4f}, {speed}, elapsed {evaluation.elapsed_seconds:.0f} s, "
        f"remaining {'-' if remaining is None else f'{remaining:.0f}'} s"
    )


def generate_samples(model, tokenizer: BPETokenizer, config: GenerationConfig) -> pl.DataFrame:
    """Continue every prompt ``num_samples`` times; one row per generation:
    prompt, sample (0-based), text (prompt + continuation), token_count (new tokens)."""
    from gpt_pipeline.model.generation import generate_text

    config.validate()
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"the model's vocab_size {model.config.vocab_size} does not match the tokenizer's "
            f"{tokenizer.vocab_size} tokens: they come from different trainings"
        )
    rows: dict[str, list] = {"prompt": [], "sample": [], "text": [], "token_count": []}
    for index, prompt in enumerate(config.prompts):
        texts = generate_text(
            model,
            tokenizer,
            prompt,
            token_count=config.token_count,
            temperature=config.temperature,
            top_k=config.top_k,
            seed=config.seed + index,
            num_samples=config.num_samples,
            unknown=config.unknown,
        )
        for sample, text in enumerate(texts):
            rows["prompt"].append(prompt)
            rows["sample"].append(sample)
            rows["text"].append(text)
            rows["token_count"].append(config.token_count)
    return pl.DataFrame(
        rows, schema={"prompt": pl.String, "sample": pl.Int32, "text": pl.String, "token_count": pl.Int32}
    )


def unseen_characters(tokenizer: BPETokenizer, texts: Sequence[str]) -> list[str]:
    """Characters of ``texts`` outside the tokenizer's alphabet, sorted.

    Example:
        >>> unseen_characters(BPETokenizer.train(["ab"], 2), ["abc", "é"])
        ['c', 'é']
    """
    alphabet = set(tokenizer.alphabet)
    return sorted({ch for text in texts for ch in text} - alphabet)


def save_tokenizer_bundle(tokenizer: BPETokenizer, directory: Path) -> Path:
    """Write ``bpe_tokenizer.json`` (ours, with its ``.vocab.txt`` listing) and, when the
    vocabulary fits that format, Hugging Face's ``tokenizer.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory / "bpe_tokenizer.json")
    try:
        tokenizer.save_hf(directory / "tokenizer.json")
    except ValueError:  # two tokens with the same text: not expressible in tokenizer.json
        pass
    return directory


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses included), for naming run folders.

    Example:
        >>> fingerprint({"a": 1}) == fingerprint({"a": 1}), fingerprint({"a": 1}) == fingerprint({"a": 2})
        (True, False)
    """

    def plain(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        return value

    payload = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


__all__ = [
    "DEFAULT_CORPUS_SEED",
    "DEFAULT_TRAINING_PERCENTAGE",
    "DEFAULT_VOCAB_SIZE",
    "GenerationConfig",
    "chars_per_token",
    "fingerprint",
    "generate_samples",
    "load_stories",
    "pieces_chars_per_token",
    "progress_line",
    "save_tokenizer_bundle",
    "tokenize_stories",
    "unseen_characters",
    "text_batches",
    "train_tokenizer",
    "write_stories",
    "write_tokenized_stories",
]
