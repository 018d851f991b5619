"""The steps of the gpt-rs lineage as plain functions, shared by the Dagster assets and the CLI.

Each function takes plain values (texts, a tokenizer, a model, a config) and returns plain values
plus a dict of facts worth reporting. Nothing here reads Dagster config, writes asset files or
logs to MLflow: the orchestration layer does that around these calls.

The steps:
    load_stories      Parquet file (or the embedded corpus) -> DataFrame with one ``text`` column
    train_tokenizer   texts -> BPETokenizer (gpt-rs's merge rules)
    tokenize_stories  texts -> Arrow table of token lists with the train/test split
    (training.train)  token arrays -> trained GPT
    generate_samples  GPT + tokenizer + prompts -> DataFrame of generations
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from gpt_pipeline.corpus import DEFAULT_NUM_STORIES, generate_stories
from gpt_pipeline.data import build_dataset_table, read_texts, split_point
from gpt_pipeline.tokenizer import BPETokenizer

DEFAULT_CORPUS_SEED = 0  # seed of the embedded story generator
DEFAULT_VOCAB_SIZE = 2048  # gpt-rs example transformer_config.ron
DEFAULT_TRAINING_PERCENTAGE = 0.9  # gpt-rs --training-percentage default


@dataclass(frozen=True)
class GenerationConfig:
    """How ``sample_generations`` and ``gpt-pipeline generate`` sample text."""

    prompts: tuple[str, ...] = ("Once",)  # texts to continue (gpt-rs --input)
    token_count: int = 256  # new tokens per generation (gpt-rs --token-count)
    temperature: float = 0.7  # softmax temperature (gpt-rs default)
    top_k: int | None = None  # sample among the k likeliest tokens; None: all of them (gpt-rs)
    num_samples: int = 1  # generations per prompt
    seed: int = 1234  # seed of the sampling generator
    unknown: str = "error"  # prompt characters never seen in training: "error" or "skip"

    def validate(self) -> None:
        import math

        if not self.prompts:
            raise ValueError("prompts is empty: give at least one prompt")
        for prompt in self.prompts:
            if not prompt:
                raise ValueError("prompt is empty: gpt-rs needs at least one character to start from")
        if self.token_count < 1:
            raise ValueError(f"token_count must be at least 1, got {self.token_count}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or empty for all tokens), got {self.top_k}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {self.unknown!r}")


def load_stories(
    path: str | None = None,
    text_column: str | None = None,
    num_stories: int = DEFAULT_NUM_STORIES,
    seed: int = DEFAULT_CORPUS_SEED,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Stories from a Parquet file, or the embedded corpus when ``path`` is None.

    Returns a DataFrame with one ``text`` column (null and empty entries dropped) and facts:
    source, rows read, rows dropped and kept.
    """
    if path:
        frame, stats = read_texts(path, text_column)
        return frame, {"source": str(path), **stats}
    if num_stories < 1:
        raise ValueError(f"num_stories must be at least 1, got {num_stories}")
    stories = generate_stories(num_stories, seed)
    frame = pl.DataFrame({"text": stories}, schema={"text": pl.String})
    stats = {
        "source": f"embedded corpus (seed {seed})",
        "rows_read": len(stories),
        "null_dropped": 0,
        "empty_dropped": 0,
        "rows_kept": len(stories),
        "source_column": "text",
    }
    return frame, stats


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> tuple[BPETokenizer, dict[str, Any]]:
    """Train gpt-rs's tokenizer on every text; facts include the seconds it took and the
    compression (characters per token) on the held-out tail that the default split tests on."""
    started = time.perf_counter()
    tokenizer = BPETokenizer.train(texts, vocab_size)
    seconds = time.perf_counter() - started
    held_out = texts[split_point(len(texts), DEFAULT_TRAINING_PERCENTAGE) :] if len(texts) > 1 else texts
    longest = sorted(range(tokenizer.vocab_size), key=lambda i: (-len(tokenizer.token_text(i)), i))[:20]
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "alphabet_size": len(tokenizer.alphabet),
        "merges": len(tokenizer.merges),
        "training_seconds": seconds,
        "chars_per_token_test": chars_per_token(tokenizer, held_out),
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


def progress_line(evaluation, total_steps: int) -> str:
    """One line of training progress for logs and the terminal.

    Example:
        >>> from gpt_pipeline.training import Evaluation
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
    from gpt_pipeline.generation import generate_text

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
    "progress_line",
    "save_tokenizer_bundle",
    "tokenize_stories",
    "unseen_characters",
    "train_tokenizer",
]
