"""The bigram baseline, the test windows and the likelihoods, on hand-made splits."""

import math

import numpy as np
import pytest
import torch

from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.evaluation.likelihood import Bigram, likelihoods, windows
from gpt_pipeline.model.gpt import GPT, GPTConfig


def test_bigram_counts_pairs_within_stories_and_smooths_towards_the_unigram():
    train = TokenArray.from_lists([[0, 1, 0, 1], [2, 2]], vocab_size=3)
    bigram = Bigram.fit(train, 3)
    # pairs: (0,1) x2, (1,0), (2,2); (1,2) crosses the two stories and is not counted
    assert bigram.totals.tolist() == [2.0, 1.0, 1.0]
    unigram = np.array([3, 3, 3]) / 9  # add-one: counts 2, 2, 2
    assert bigram.unigram == pytest.approx(unigram)
    expected = (2 + unigram[1]) / (2 + 1)  # p(1 | 0) = (c(0,1) + prior * u(1)) / (c(0) + prior)
    assert math.exp(bigram.log_prob(np.array([0]), np.array([1]))[0]) == pytest.approx(expected)
    assert math.exp(bigram.log_prob(np.array([1]), np.array([2]))[0]) == pytest.approx((0 + 1 / 3) / (1 + 1))
    for row in range(3):
        assert bigram.row(row).sum() == pytest.approx(1.0)
        assert np.exp(bigram.log_prob(np.full(3, row), np.arange(3))) == pytest.approx(bigram.row(row))


def test_bigram_counts_the_same_in_chunks(monkeypatch):
    stories = [[int(x) for x in np.random.default_rng(i).integers(0, 5, size=7)] for i in range(20)]
    whole = Bigram.fit(TokenArray.from_lists(stories), 5)
    monkeypatch.setattr("gpt_pipeline.evaluation.likelihood._CHUNK", 10)  # a few stories per chunk
    chunked = Bigram.fit(TokenArray.from_lists(stories), 5)
    assert chunked.codes.tolist() == whole.codes.tolist() and chunked.counts.tolist() == whole.counts.tolist()


def test_bigram_refuses_ids_beyond_the_vocabulary():
    with pytest.raises(ValueError, match="token id 4 is not below the vocabulary size 3"):
        Bigram.fit(TokenArray.from_lists([[0, 4]]), 3)


def test_sampling_a_deterministic_bigram_follows_its_only_pair():
    bigram = Bigram.fit(TokenArray.from_lists([[0, 1, 2, 0, 1, 2] * 50]), 3, prior=1e-9)
    rng = np.random.default_rng(0)
    assert bigram.sample([2], 6, temperature=0.5, rng=rng) == [0, 1, 2, 0, 1, 2]
    assert bigram.sample([0], 3, temperature=3.0, rng=rng, top_k=1) == [1, 2, 0]


def test_windows_step_by_the_context_and_are_spread_when_capped():
    test = TokenArray.from_lists([[1] * 9, [2], [3, 3]])
    assert windows(test, 4, 100) == [(0, 5), (4, 9), (10, 12)]  # the one-token story has none
    assert windows(test, 4, 2) == [(0, 5), (10, 12)]


def test_a_uniform_model_costs_log2_vocab_bits_per_token_at_every_position():
    config = GPTConfig(vocab_size=8, embedding_size=8, context_length=4, head_count=2, block_count=1)
    model = GPT(config)
    with torch.no_grad():
        model.linear_head.weight.zero_()  # every logit 0: p = 1/8 for every token
    test = TokenArray.from_lists([[1, 2, 3, 4, 5, 6], [7, 0, 1]])
    lengths = np.array([1, 2, 1, 3, 1, 1, 2, 1])  # characters of each token id
    train = TokenArray.from_lists([[0, 1, 2, 3]])
    model_l, bigram_l = likelihoods(model, Bigram.fit(train, 8), test, lengths, max_windows=10)
    # windows [1 2 3 4 5], [5 6], [7 0 1]: targets 2 3 4 5 | 6 | 0 1 -> 7 predictions
    targets = [2, 3, 4, 5, 6, 0, 1]
    assert model_l.tokens == 7
    assert model_l.bits_per_character == pytest.approx(3 * 7 / lengths[targets].sum())
    by_position = [[2, 6, 0], [3, 1], [4], [5]]
    for position, ids in enumerate(by_position):
        assert model_l.curve[position] == pytest.approx(3 * len(ids) / lengths[ids].sum())
    assert bigram_l.tokens == 7 and len(bigram_l.curve) == 4
    assert model.training  # the mode is restored
