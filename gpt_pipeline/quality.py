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

from gpt_pipeline.tokens import TokenArray


@dataclass(frozen=True)
class Gate:
    """The outcome of one quality gate."""

    passed: bool
    description: str  # one line: what was checked and what was found
    figures: dict[str, Any] = field(default_factory=dict)  # numbers worth showing


def tokenizer_round_trip(tokenizer, texts: Sequence[str], sample_size: int = 200) -> Gate:
    """Encode then decode an evenly spread sample of ``texts``; every one must come back exactly.

    Example:
        >>> from gpt_pipeline.tokenizer import BPETokenizer
        >>> tok = BPETokenizer.train(["a cat", "a hat"], 8)
        >>> tokenizer_round_trip(tok, ["a cat", "a hat"]).passed
        True
    """
    if not texts:
        return Gate(False, "no stories to round-trip")
    step = max(1, len(texts) // sample_size)
    sample = list(texts[::step])[:sample_size]
    decoded = [tokenizer.decode(ids) for ids in tokenizer.encode_batch(sample)]
    bad = [i * step for i, (a, b) in enumerate(zip(sample, decoded)) if a != b]
    figures = {"sampled": len(sample), "mismatches": len(bad)}
    if bad:
        return Gate(False, f"{len(bad)} of {len(sample)} stories do not round-trip (first: row {bad[0]})", figures)
    return Gate(True, f"all {len(sample)} sampled stories round-trip exactly", figures)


def token_ids_in_vocab(table: pa.Table, vocab_size: int, column: str = "tokens") -> Gate:
    """Every token id in the list column ``column`` is below ``vocab_size``.

    Example:
        >>> t = pa.table({"tokens": pa.array([[0, 5], [9]], pa.list_(pa.uint16()))})
        >>> token_ids_in_vocab(t, 10).passed, token_ids_in_vocab(t, 9).passed
        (True, False)
    """
    values = pc.list_flatten(table.column(column))
    largest = pc.max(values).as_py() if len(values) else None
    figures = {"tokens": len(values), "max_id": -1 if largest is None else largest, "vocab_size": vocab_size}
    if largest is not None and largest >= vocab_size:
        return Gate(False, f"token id {largest} is not below the vocabulary size {vocab_size}", figures)
    return Gate(True, f"all {len(values)} token ids are below {vocab_size}", figures)


def unigram_loss(train: TokenArray, test: TokenArray, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of the test tokens under the train split's unigram
    distribution, add-one smoothed so that unseen tokens cost a finite amount.

    Example:
        >>> tr = TokenArray.from_lists([[0, 0, 0, 1]]); te = TokenArray.from_lists([[0, 1]])
        >>> round(unigram_loss(tr, te, 2), 4)   # p = (4/6, 2/6): -(ln 4/6 + ln 2/6) / 2
        0.752
    """
    counts = np.bincount(train.tokens.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    if len(test.tokens) == 0:
        return float("nan")
    return float(-log_p[test.tokens.astype(np.int64)].mean())


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
