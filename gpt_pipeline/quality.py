"""Quality gates on the lineage's values: what must hold before a value is stored and used.

Each gate is a plain function returning a :class:`Gate` (passed, a one-line description and
figures). The Dagster asset checks in ``gpt_pipeline.defs.checks`` run them *before* the
asset's value is stored, so a failing gate never replaces the last good file. Nothing here
knows about Dagster.

    tokenizer_round_trip   encode -> decode gives every sampled story back exactly
    token_ids_in_vocab     every stored token id is below the vocabulary size
    beats_unigram          the model's test loss is finite and below a unigram model's
    generations_decode     every generation is non-empty text that re-encodes and decodes
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.data.tokens import TokenArray


@dataclass(frozen=True)
class Gate:
    """The outcome of one quality gate."""

    passed: bool
    description: str  # one line: what was checked and what was found
    figures: dict[str, Any] = field(default_factory=dict)  # numbers worth showing


def tokenizer_round_trip(tokenizer, texts: Sequence[str] | TableFile, sample_size: int = 200) -> Gate:
    """Encode then decode an evenly spread sample of ``texts``; every one must come back exactly.

    ``texts`` is a list, or a stored story file (``TableFile``, its ``text`` column) read one
    record batch at a time (see ``spread_sample``).

    Example:
        >>> from gpt_pipeline.tokenizer import BPETokenizer
        >>> tok = BPETokenizer.train(["a cat", "a hat"], 8)
        >>> tokenizer_round_trip(tok, ["a cat", "a hat"]).passed
        True
    """
    rows, sample = spread_sample(texts, sample_size)
    if not sample:
        return Gate(False, "no stories to round-trip")
    decoded = [tokenizer.decode(ids) for ids in tokenizer.encode_batch(sample)]
    bad = [rows[i] for i, (a, b) in enumerate(zip(sample, decoded)) if a != b]
    figures = {"sampled": len(sample), "mismatches": len(bad)}
    if bad:
        return Gate(False, f"{len(bad)} of {len(sample)} stories do not round-trip (first: row {bad[0]})", figures)
    return Gate(True, f"all {len(sample)} sampled stories round-trip exactly", figures)


def spread_sample(texts: Sequence[str] | TableFile, sample_size: int) -> tuple[range, list[str]]:
    """Rows 0, k, 2k, ... (k = max(1, rows // sample_size)), at most ``sample_size`` of them, and
    their texts. A ``TableFile`` (its ``text`` column) is read one record batch at a time and
    only the sampled texts are kept.

    Example:
        >>> spread_sample([f"s{i}" for i in range(10)], 4)
        (range(0, 8, 2), ['s0', 's2', 's4', 's6'])
    """
    count = texts.num_rows if isinstance(texts, TableFile) else len(texts)
    step = max(1, count // sample_size)
    rows = range(0, count, step)[:sample_size]
    if not isinstance(texts, TableFile):
        return rows, [texts[r] for r in rows]
    sample, start = [], 0
    for batch in texts.iter_batches(["text"], batch_size=16_384):  # a few MB of text at a time
        end = start + batch.num_rows
        wanted = rows[-(-start // step) : -(-end // step)]  # the sampled rows in [start, end)
        sample += batch.column(0).take([r - start for r in wanted]).to_pylist()
        start = end
    return rows, sample


def token_ids_in_vocab(data: pa.Table | TableFile, vocab_size: int, column: str = "tokens") -> Gate:
    """Every token id in the list column ``column`` is below ``vocab_size``.

    ``data`` is a table in memory, or a stored ``TableFile`` read one record batch at a time.

    Example:
        >>> t = pa.table({"tokens": pa.array([[0, 5], [9]], pa.list_(pa.uint16()))})
        >>> token_ids_in_vocab(t, 10).passed, token_ids_in_vocab(t, 9).passed
        (True, False)
    """
    if isinstance(data, TableFile):
        columns = (batch.column(0) for batch in data.iter_batches([column]))
    else:
        columns = iter(data.column(column).chunks)
    count, largest = 0, None
    for lists in columns:
        values = pc.list_flatten(lists)
        count += len(values)
        top = pc.max(values).as_py() if len(values) else None
        if top is not None and (largest is None or top > largest):
            largest = top
    figures = {"tokens": count, "max_id": -1 if largest is None else largest, "vocab_size": vocab_size}
    if largest is not None and largest >= vocab_size:
        return Gate(False, f"token id {largest} is not below the vocabulary size {vocab_size}", figures)
    return Gate(True, f"all {count} token ids are below {vocab_size}", figures)


_CHUNK = 1 << 20  # tokens per step: a memory-mapped split is read a few MB at a time


def unigram_loss(train: TokenArray, test: TokenArray, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of the test tokens under the train split's unigram
    distribution, add-one smoothed so that unseen tokens cost a finite amount.

    Reads the token arrays in chunks, so memory-mapped splits are never copied whole.

    Example:
        >>> tr = TokenArray.from_lists([[0, 0, 0, 1]]); te = TokenArray.from_lists([[0, 1]])
        >>> round(unigram_loss(tr, te, 2), 4)   # p = (4/6, 2/6): -(ln 4/6 + ln 2/6) / 2
        0.752
    """
    counts = np.ones(vocab_size, dtype=np.float64)  # add-one smoothing
    for start in range(0, len(train.tokens), _CHUNK):
        chunk = np.bincount(train.tokens[start : start + _CHUNK], minlength=vocab_size)
        if len(chunk) > len(counts):  # ids beyond vocab_size: counted as before, in a longer table
            counts = np.concatenate([counts, np.ones(len(chunk) - len(counts))])
        counts[: len(chunk)] += chunk
    log_p = np.log(counts / counts.sum())
    if len(test.tokens) == 0:
        return float("nan")
    total = 0.0
    for start in range(0, len(test.tokens), _CHUNK):
        total += float(log_p[test.tokens[start : start + _CHUNK]].sum())
    return -total / len(test.tokens)


def beats_unigram(test_loss: float, baseline: float) -> Gate:
    """The model's test loss is finite and below the unigram baseline.

    Example:
        >>> beats_unigram(2.0, 4.5).passed, beats_unigram(float("nan"), 4.5).passed
        (True, False)
    """
    figures = {"test_loss": test_loss, "unigram_loss": baseline}
    if not math.isfinite(test_loss):
        return Gate(False, f"test loss is not finite: {test_loss}", figures)
    if not test_loss < baseline:
        return Gate(False, f"test loss {test_loss:.4f} is not below the unigram model's {baseline:.4f}", figures)
    return Gate(True, f"test loss {test_loss:.4f} is below the unigram model's {baseline:.4f}", figures)


def generations_decode(texts: Sequence[str], prompts: Sequence[str], tokenizer) -> Gate:
    """Every generation is non-empty, longer than its prompt, and survives encode -> decode.

    Example:
        >>> from gpt_pipeline.tokenizer import BPETokenizer
        >>> tok = BPETokenizer.train(["a cat", "a hat"], 8)
        >>> generations_decode(["a cat hat"], ["a"], tok).passed, generations_decode(["a"], ["a"], tok).passed
        (True, False)
    """
    problems = []
    for index, (text, prompt) in enumerate(zip(texts, prompts)):
        if not text or len(text) <= len(prompt):
            problems.append(f"generation {index} adds nothing to its prompt {prompt!r}")
        elif (continuation := text[len(prompt):] if text.startswith(prompt) else text) and tokenizer.decode(
            tokenizer.encode(continuation, unknown="skip")
        ) != continuation:  # the prompt may hold characters the tokenizer skips (unknown="skip")
            problems.append(f"generation {index} does not decode back to itself")
    figures = {"generations": len(texts), "problems": len(problems)}
    if not texts:
        return Gate(False, "no generations", figures)
    if problems:
        return Gate(False, f"{len(problems)} of {len(texts)} generations fail: {problems[0]}", figures)
    return Gate(True, f"all {len(texts)} generations are non-empty and decode", figures)
