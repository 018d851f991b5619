"""Tests for gpt_pipeline.model.sampling and GPT.generate: shapes, validation, gpt-rs's loop
(``gpt_pipeline_tests.reference.generate``), greedy and sampled."""

import math

import pytest
import torch

from gpt_pipeline.model.sampling import generate_text, sample_next
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline_tests import reference
from gpt_pipeline_tests.reference import ReferenceGPT

CONFIG = GPTConfig(vocab_size=12, embedding_size=16, context_length=8, head_count=2, block_count=2,
                   feed_forward_multiplier=2)


def _model():
    model = GPT(CONFIG)
    model.reset_parameters(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # large random weights: varied, well-separated arg-maxes
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return model


class CharTokenizer:
    """A character tokenizer over a fixed alphabet, written for these tests."""

    alphabet = "abcdefghij .!"[: CONFIG.vocab_size]

    def encode(self, text, unknown="error"):
        if unknown == "error":
            bad = [c for c in text if c not in self.alphabet]
            if bad:
                raise ValueError(f"unknown characters {bad}")
        return [self.alphabet.index(c) for c in text if c in self.alphabet]

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def gpt_rs_greedy(model, prompt, count):
    """gpt-rs's loop with arg-max sampling (``reference.generate``) on gpt-rs's model holding
    ``model``'s weights: the last context_length tokens right-padded with 0 to context_length, the
    whole window through the model, the logits at the last real position."""
    return reference.generate(ReferenceGPT.from_gpt(model), prompt, count, greedy=True)


@pytest.mark.parametrize("prompt", [[3], [1, 5, 7], list(range(10))])
def test_greedy_equals_gpt_rs_loop_token_for_token(prompt):
    model = _model()
    count = 20  # runs past the context window of 8: both the cached and the sliding phase
    expected = gpt_rs_greedy(model, prompt, count)
    out = model.generate(torch.tensor([prompt]), count, top_k=1)
    assert out.tolist() == [expected]
    assert len(set(expected[len(prompt):])) > 2  # not a constant sequence


@pytest.mark.parametrize("prompt", [[3], list(range(10))])
def test_sampled_tokens_equal_gpt_rs_loop_with_the_same_generator(prompt):
    """One prompt, the same seed: gpt-rs's loop and GPT.generate draw the same random numbers
    (one multinomial draw per token) from the same probabilities, so they pick the same tokens."""
    model = _model()
    with torch.no_grad():  # milder weights than _model's: varied draws, not near-certain ones
        for p in model.parameters():
            p.mul_(0.3)
    expected = reference.generate(ReferenceGPT.from_gpt(model), prompt, 30, 0.9, torch.Generator().manual_seed(4))
    out = model.generate(torch.tensor([prompt]), 30, 0.9, generator=torch.Generator().manual_seed(4))
    assert out.tolist() == [expected]
    other = model.generate(torch.tensor([prompt]), 30, 0.9, generator=torch.Generator().manual_seed(5))
    assert other.tolist() != [expected]  # the draws matter


def test_batched_prompts_are_sampled_independently():
    model = _model()
    prompts = torch.tensor([[1, 2], [4, 4], [9, 0]])
    out = model.generate(prompts, 12, top_k=1)
    assert out.shape == (3, 14) and torch.equal(out[:, :2], prompts)
    for row, prompt in zip(out.tolist(), prompts.tolist()):
        assert row == gpt_rs_greedy(model, prompt, 12)


def test_sampling_is_reproducible_and_restores_training_mode():
    model = _model().train()
    idx = torch.tensor([[1, 2, 3]])
    a = model.generate(idx, 15, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(idx, 15, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 18) and model.training


def test_sample_next_known_answers():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 6.0]])
    assert sample_next(logits, top_k=1).tolist() == [1, 2]
    g = torch.Generator().manual_seed(0)
    # top_k=2 never picks the smallest logit; a very low temperature always picks the largest
    picks = torch.stack([sample_next(logits, 5.0, 2, g) for _ in range(300)])
    assert set(picks[:, 0].tolist()) == {1, 2} and set(picks[:, 1].tolist()) == {0, 2}
    assert sample_next(logits, 1e-3, None, g).tolist() == [1, 2]
    # temperature divides the logits: softmax([0, ln 3] / 1) = [1/4, 3/4]
    two = torch.tensor([[0.0, math.log(3.0)]]).expand(20000, 2)
    share = sample_next(two, 1.0, None, g).float().mean().item()
    assert abs(share - 0.75) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature must be"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"temperature": float("inf")}, "temperature must be"),
        ({"token_count": 0}, "token count must be a positive integer, got 0"),
        ({"top_k": 0}, "top_k must be None or an integer >= 1, got 0"),
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
    ],
)
def test_generate_text_validation(kwargs, message):
    args = {"prompt": "abc", "token_count": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_text(_model(), CharTokenizer(), **args)


def test_generate_text_returns_prompt_plus_continuations():
    model, tokenizer = _model(), CharTokenizer()
    texts = generate_text(model, tokenizer, "ab c", 10, temperature=0.9, seed=3, num_samples=4)
    assert len(texts) == 4 and all(t.startswith("ab c") and len(t) == 14 for t in texts)
    assert generate_text(model, tokenizer, "ab c", 10, temperature=0.9, seed=3, num_samples=4) == texts
    greedy = generate_text(model, tokenizer, "ab c", 10, top_k=1)[0]
    assert greedy == tokenizer.decode(gpt_rs_greedy(model, tokenizer.encode("ab c"), 10))


def test_generate_text_unknown_characters():
    model, tokenizer = _model(), CharTokenizer()
    with pytest.raises(ValueError, match="unknown characters"):
        generate_text(model, tokenizer, "abz", 3)
    assert generate_text(model, tokenizer, "abz", 3, unknown="skip", top_k=1)[0].startswith("abz")
    with pytest.raises(ValueError, match="encodes to no tokens"):
        generate_text(model, tokenizer, "zz", 3, unknown="skip")
