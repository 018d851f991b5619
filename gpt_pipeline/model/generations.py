"""Generations: a trained model continues prompts (``sample_generations``, ``gpt-pipeline
generate``, the pyfunc model), with its settings ``GenerationConfig``.

``generate_samples`` runs ``sampling.generate_text`` (gpt-rs's sampling, made fast) for every
prompt and collects one row per generation; ``unseen_characters`` names the prompt characters a
tokenizer cannot encode (dropped with ``unknown="skip"``). The tokenizer is any object with
``alphabet``, ``vocab_size``, ``encode`` and ``decode`` (a ``BPETokenizer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import polars as pl
from pydantic import Field

from gpt_pipeline.fields import settings
from gpt_pipeline.model.sampling import generate_text


@settings(frozen=True)
class GenerationConfig:
    """How ``sample_generations`` and ``gpt-pipeline generate`` sample text (gpt-rs's defaults)."""

    prompts: tuple[str, ...] = Field(("Once",), description="Prompts to continue (gpt-rs --input).",
                                     strict=False)  # a list (CLI, YAML) is taken as a tuple
    token_count: int = Field(256, description="New tokens per generation (gpt-rs --token-count).", ge=1)
    temperature: float = Field(0.7, description="Softmax temperature (gpt-rs: 0.7).", gt=0)
    top_k: int | None = Field(None, description="Sample among the k likeliest tokens; empty: all of them "
                              "(gpt-rs).", ge=1)
    num_samples: int = Field(1, description="Generations per prompt.", ge=1)
    seed: int = Field(1234, description="Seed of the sampling generator.")
    unknown: Literal["error", "skip"] = Field("error", description="Prompt characters the tokenizer never "
                                              "saw: 'error' (fail) or 'skip' (drop them).")

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("prompts is empty: give at least one prompt")
        if not all(self.prompts):
            raise ValueError("prompt is empty: gpt-rs needs at least one character to start from")


GENERATIONS_SCHEMA = {"prompt": pl.String, "sample": pl.Int32, "text": pl.String, "token_count": pl.Int32}


def generate_samples(model, tokenizer, config: GenerationConfig) -> pl.DataFrame:
    """Continue every prompt ``num_samples`` times; one row per generation: ``prompt``,
    ``sample`` (0-based), ``text`` (prompt + continuation), ``token_count`` (new tokens).

    Prompt i samples with seed ``config.seed + i``. The model and the tokenizer must come from
    the same training (equal vocabulary sizes), else ``ValueError``.
    """
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size {model.config.vocab_size} does not match the tokenizer's "
                         f"{tokenizer.vocab_size} tokens: they come from different trainings")
    rows = []
    for index, prompt in enumerate(config.prompts):
        texts = generate_text(model, tokenizer, prompt, config.token_count, config.temperature, config.top_k,
                              seed=config.seed + index, num_samples=config.num_samples, unknown=config.unknown)
        rows += [{"prompt": prompt, "sample": sample, "text": text, "token_count": config.token_count}
                 for sample, text in enumerate(texts)]
    return pl.DataFrame(rows, schema=GENERATIONS_SCHEMA)

def unseen_characters(tokenizer, texts: Sequence[str]) -> list[str]:
    """Characters of ``texts`` outside the tokenizer's alphabet, sorted.

    Example:
        >>> from gpt_pipeline.tokenizer import BPETokenizer
        >>> unseen_characters(BPETokenizer.train(["ab"], 2), ["abc", "é"])
        ['c', 'é']
    """
    alphabet = set(tokenizer.alphabet)
    return sorted({ch for text in texts for ch in text} - alphabet)
