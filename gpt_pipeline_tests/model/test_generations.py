"""The sampling step (``model.generations``): one row per generation, prompt i seeded with seed + i,
the same texts as ``generate_text``; a tokenizer of another training is refused."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.model.generations import GenerationConfig, generate_samples, unseen_characters
from gpt_pipeline.tokenizer import BPETokenizer

STORIES = ["the cat sat on the mat", "a dog ran off", "the hat"]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(STORIES, 24)


def _model(vocab_size: int) -> GPT:
    model = GPT(GPTConfig(vocab_size=vocab_size, embedding_size=16, context_length=8, head_count=2, block_count=1))
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model.eval()


def test_one_row_per_generation_as_generate_text_samples(tokenizer):
    model = _model(tokenizer.vocab_size)
    config = GenerationConfig(prompts=("the", "a dog"), token_count=5, num_samples=2, seed=3)
    frame = generate_samples(model, tokenizer, config)
    assert frame.schema == pl.Schema({"prompt": pl.String, "sample": pl.Int32, "text": pl.String,
                                      "token_count": pl.Int32})
    assert frame["prompt"].to_list() == ["the", "the", "a dog", "a dog"]
    assert frame["sample"].to_list() == [0, 1, 0, 1] and set(frame["token_count"]) == {5}
    for index, prompt in enumerate(config.prompts):
        expected = generate_text(model, tokenizer, prompt, token_count=5, temperature=config.temperature,
                                 seed=3 + index, num_samples=2)
        assert frame.filter(pl.col("prompt") == prompt)["text"].to_list() == expected
    assert generate_samples(model, tokenizer, config).equals(frame)  # seeded: the same again


def test_bad_settings_and_a_foreign_tokenizer_are_refused(tokenizer):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate_samples(_model(tokenizer.vocab_size), tokenizer, GenerationConfig(prompts=("",)))
    with pytest.raises(ValueError, match="the model's vocab_size 50 does not match the tokenizer's 24 tokens"):
        generate_samples(_model(50), tokenizer, GenerationConfig(token_count=2))


def test_unseen_characters_are_named_sorted(tokenizer):
    assert unseen_characters(tokenizer, ["the cat", "zebra é"]) == ["b", "z", "é"]
