"""Held-out stories cut after their first sentence, and their continuations by the model (batched
through GPT.generate) and by the bigram."""

import numpy as np
import pytest
import torch

from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.evaluation.continuations import (bigram_continuations, first_sentence_cut, held_out_stories,
                                                   model_continuations)
from gpt_pipeline.evaluation.likelihood import Bigram
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer

STORIES = [
    "Tom had a dog. The dog ran fast and Tom was happy.",
    "no sentence end at all",
    'Sue said "Hi!" Then she sat down.',
    "Only one sentence.",
    "A cat sat. It sat on a mat. The end.",
    "The sun was up. Birds sang in the tree.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(STORIES, 60)


def split(tokenizer):
    return TokenArray.from_lists(tokenizer.encode_batch(STORIES))


def test_first_sentence_cut():
    assert first_sentence_cut("Tom ran. He fell.") == len("Tom ran.")
    assert first_sentence_cut('"Stop!" she said.') == len('"Stop!"')
    assert first_sentence_cut("It was big... and red.") == len("It was big...")
    assert first_sentence_cut("Tom ran.") is None and first_sentence_cut("Tom ran") is None


def test_held_out_stories_skip_stories_without_a_second_part_and_cap_the_truth(tokenizer):
    stories = held_out_stories(split(tokenizer), tokenizer, count=10, max_tokens=1000)
    assert [s.index for s in stories] == [0, 2, 4, 5]
    assert (stories[1].prompt, stories[1].truth) == ('Sue said "Hi!"', " Then she sat down.")
    assert all(tokenizer.decode(s.prompt_ids) + tokenizer.decode(s.truth_ids) == STORIES[s.index] for s in stories)
    capped = held_out_stories(split(tokenizer), tokenizer, count=2, max_tokens=3)
    assert [s.index for s in capped] == [0, 2]  # every third first: 0, 3 (one sentence); then 1 (no end), 2
    assert all(len(s.truth_ids) == 3 and s.truth == tokenizer.decode(s.truth_ids) for s in capped)


def model(tokenizer, context_length):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, embedding_size=16, context_length=context_length,
                         head_count=2, block_count=1))


def test_while_the_window_fills_each_prompt_length_is_one_batch_seeded_with_it(tokenizer):
    wide = model(tokenizer, 64)  # every story ends before its window is full: phase 1 only
    stories = held_out_stories(split(tokenizer), tokenizer, count=10, max_tokens=1000)
    assert all(len(s.prompt_ids) + len(s.truth_ids) <= 64 for s in stories)
    texts = model_continuations(wide, tokenizer, stories, temperature=0.9, top_k=None, seed=11)
    assert texts == model_continuations(wide, tokenizer, stories, temperature=0.9, top_k=None, seed=11)
    lengths = [len(s.prompt_ids) for s in stories]
    alone = [(s, t) for s, t in zip(stories, texts) if lengths.count(len(s.prompt_ids)) == 1]
    assert alone
    for story, text in alone:  # alone in its batch: generate_text with the batch's seed
        expected = generate_text(wide, tokenizer, story.prompt, len(story.truth_ids), temperature=0.9,
                                 seed=11 + len(story.prompt_ids))[0]
        assert story.prompt + text == expected


def test_after_the_window_fills_the_stories_continue_in_one_batch_as_each_would_alone(tokenizer):
    narrow = model(tokenizer, 4)  # windows fill after 4 tokens: most of each continuation is phase 2
    stories = held_out_stories(split(tokenizer), tokenizer, count=10, max_tokens=1000)
    greedy = model_continuations(narrow, tokenizer, stories, temperature=1.0, top_k=1, seed=0)
    for story, text in zip(stories, greedy):  # greedy: no draw, so each row is what it writes alone
        assert story.prompt + text == generate_text(narrow, tokenizer, story.prompt, len(story.truth_ids),
                                                    top_k=1)[0]
    sampled = model_continuations(narrow, tokenizer, stories, temperature=0.9, top_k=None, seed=5)
    assert sampled == model_continuations(narrow, tokenizer, stories, temperature=0.9, top_k=None, seed=5)
    assert sampled != model_continuations(narrow, tokenizer, stories, temperature=0.9, top_k=None, seed=6)


def test_bigram_continuations_are_seeded_and_as_long_as_the_truth(tokenizer):
    data = split(tokenizer)
    bigram = Bigram.fit(data, tokenizer.vocab_size)
    stories = held_out_stories(data, tokenizer, count=10, max_tokens=1000)
    texts = bigram_continuations(bigram, tokenizer, stories, 0.7, None, seed=3)
    assert texts == bigram_continuations(bigram, tokenizer, stories, 0.7, None, seed=3)
    assert texts != bigram_continuations(bigram, tokenizer, stories, 0.7, None, seed=4)
    rng = np.random.default_rng(3)
    first = tokenizer.decode(bigram.sample(list(stories[0].prompt_ids), len(stories[0].truth_ids), 0.7, rng))
    assert texts[0] == first
