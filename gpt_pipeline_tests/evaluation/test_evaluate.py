"""A whole evaluation on the embedded corpus: a model trained long enough to beat the unigram
baseline passes the collapse check, the same model sampled at temperature 3 and a model of a
few dozen steps fail it; the figures and the report hold together."""

import math

import pytest

from gpt_pipeline import quality
from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.evaluation.evaluate import SOURCES, collapse_gate, evaluate
from gpt_pipeline.evaluation.metrics import METRICS
from gpt_pipeline.evaluation.report import markdown_table, position_curve_png, samples
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.training.loop import TrainConfig, train

# whole words are tokens (a vocabulary of 1,000 over 300 stories): a model invents a word by
# putting two tokens together without a space, which is what a collapsed model does
SETTINGS = dict(stories=16, max_continuation_tokens=48)


@pytest.fixture(scope="module")
def corpus():
    stories = generate_stories(300, seed=3)
    tokenizer = BPETokenizer.train(stories, 1000)
    ids = tokenizer.encode_batch(stories)
    return tokenizer, TokenArray.from_lists(ids[:270], 1000), TokenArray.from_lists(ids[270:], 1000)


def trained(corpus, steps: int) -> GPT:
    tokenizer, train_split, test_split = corpus
    config = GPTConfig(vocab_size=tokenizer.vocab_size, embedding_size=32, context_length=32, head_count=2,
                       block_count=1, feed_forward_multiplier=2)
    settings = TrainConfig(learning_rate=0.01, training_iterations=steps, evaluation_interval=steps,
                           evaluation_iterations=1, contexts_per_batch=16, seed=7, device="cpu", threads=1)
    result = train(config, settings, train_split, test_split)
    unigram = quality.unigram_loss(train_split, test_split, tokenizer.vocab_size)
    assert quality.beats_unigram(result.test_loss, unigram).passed
    return result.model


@pytest.fixture(scope="module")
def good_model(corpus):
    return trained(corpus, 150)


def test_a_trained_model_passes_and_the_same_model_at_temperature_3_fails(corpus, good_model, tmp_path):
    tokenizer, train_split, test_split = corpus
    config = EvaluationConfig(**SETTINGS)
    evaluation = evaluate(good_model, tokenizer, train_split, test_split, config)
    gate = collapse_gate(evaluation, config)
    assert gate.passed, gate.description
    assert len(evaluation.stories) == 16 and len(evaluation.continuations["model"]) == 16
    figures = evaluation.figures()
    assert {f"{prefix}{name}" for prefix in ("", "reference_", "bigram_") for name in METRICS} <= set(figures)
    assert figures["test_bits_per_character"] < 2 * figures["bigram_test_bits_per_character"]
    assert evaluation.texts["reference"]["unseen_word_rate"] < 0.05  # the test stories' own words
    assert len(evaluation.model.curve) == 32 and math.isfinite(evaluation.model.curve[-1])
    # the model uses its context: later positions cost fewer bits than the first
    assert evaluation.model.curve[-1] < evaluation.model.curve[0]
    table = markdown_table(evaluation)
    assert table.count("\n") == 1 + 1 + len(METRICS) and "| repeated 4-gram rate |" in table
    assert [s["truth"] for s in samples(evaluation)] == [s.truth for s in evaluation.stories[:5]]
    assert position_curve_png(evaluation, tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"

    hot = EvaluationConfig(**SETTINGS, temperature=3.0)
    failed = collapse_gate(evaluate(good_model, tokenizer, train_split, test_split, hot), hot)
    assert not failed.passed and "unseen-word rate" in failed.description


def test_a_model_of_a_few_dozen_steps_fails(corpus):
    tokenizer, train_split, test_split = corpus
    config = EvaluationConfig(**SETTINGS)
    evaluation = evaluate(trained(corpus, 30), tokenizer, train_split, test_split, config)
    gate = collapse_gate(evaluation, config)
    assert not gate.passed, gate.description
    assert gate.figures["unseen_word_rate"] > gate.figures["reference_unseen_word_rate"] + 0.1


def test_the_same_evaluation_twice_gives_the_same_figures(corpus, good_model):
    tokenizer, train_split, test_split = corpus
    config = EvaluationConfig(stories=4, max_continuation_tokens=16)
    first = evaluate(good_model, tokenizer, train_split, test_split, config)
    second = evaluate(good_model, tokenizer, train_split, test_split, config)
    assert first.figures() == second.figures() and first.continuations == second.continuations
    assert set(first.texts) == set(SOURCES)


def test_a_model_of_another_vocabulary_is_refused(corpus):
    tokenizer, train_split, test_split = corpus
    other = GPT(GPTConfig(vocab_size=50, embedding_size=8, context_length=4, head_count=1, block_count=1))
    with pytest.raises(ValueError, match="vocab_size 50 does not match the tokenizer's 1000 tokens"):
        evaluate(other, tokenizer, train_split, test_split, EvaluationConfig())
    with pytest.raises(ValueError, match="EvaluationConfig.stories must be a positive integer, got 0"):
        evaluate(other, tokenizer, train_split, test_split, EvaluationConfig(stories=0))
