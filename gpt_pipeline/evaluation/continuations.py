"""Continuations of held-out stories: each test story cut after its first sentence, continued by
the model (``GPT.generate``) and by the bigram baseline for as many tokens as the true rest.

``held_out_stories`` picks the stories evenly spread over the test split (a story without a
sentence end, or with no word after its first sentence, is passed over for the next one).
``model_continuations`` batches the generation: stories whose prompts have the same number of
tokens are one batch (``GPT.generate`` takes ``[B, T]``), each batch generating as many tokens as
its longest true continuation, every row then cut to its own length (sampling is sequential, so
the cut row is what a generation of that length would have drawn in that batch). Each batch
samples from a generator seeded with ``seed`` + its prompt length: the same stories, model and
seed give the same continuations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.evaluation.likelihood import Bigram
from gpt_pipeline.evaluation.metrics import SENTENCE_END, WORD
from gpt_pipeline.model.generation import seeded_generator


@dataclass(frozen=True)
class HeldOutStory:
    """A test story cut after its first sentence: ``prompt`` and the ``truth`` that followed."""

    index: int  # in the test split
    prompt: str
    truth: str
    prompt_ids: tuple[int, ...]
    truth_ids: tuple[int, ...]


def first_sentence_cut(text: str) -> int | None:
    """Where ``text``'s first sentence ends (after its punctuation and closing quotes), or None
    when it has no sentence end or no word follows it.

    Example:
        >>> text = 'Tom said "Hi!" and left. He ran.'
        >>> text[: first_sentence_cut(text)]
        'Tom said "Hi!"'
        >>> first_sentence_cut("no end here"), first_sentence_cut("One sentence only.")
        (None, None)
    """
    match = SENTENCE_END.search(text)
    if match is None or not WORD.search(text[match.end():].lower()):
        return None
    return match.end()


def held_out_stories(test: TokenArray, tokenizer, count: int, max_tokens: int) -> list[HeldOutStory]:
    """Up to ``count`` test stories cut after their first sentence, spread evenly over the split
    (every k-th story, k = stories // count, then the others in order while more are needed);
    a truth longer than ``max_tokens`` tokens is cut to that many."""
    total = len(test)
    step = max(1, total // max(1, count))
    order = list(range(0, total, step)) + [i for i in range(total) if i % step]
    stories = []
    for index in order:
        if len(stories) == count:
            break
        text = tokenizer.decode(test.story(index))
        cut = first_sentence_cut(text)
        if cut is None:
            continue
        prompt_ids = tokenizer.encode(text[:cut], unknown="skip")
        truth_ids = tokenizer.encode(text[cut:], unknown="skip")[:max_tokens]
        if not prompt_ids or not truth_ids:
            continue
        stories.append(HeldOutStory(index, text[:cut], tokenizer.decode(truth_ids), tuple(prompt_ids),
                                    tuple(truth_ids)))
    return stories


def model_continuations(model, tokenizer, stories: Sequence[HeldOutStory], temperature: float,
                        top_k: int | None, seed: int) -> list[str]:
    """The model's continuation of each story, as many tokens as its truth (see the module docstring)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for position, story in enumerate(stories):
        groups[len(story.prompt_ids)].append(position)
    device = model.linear_head.weight.device
    texts: list[str] = [""] * len(stories)
    for length in sorted(groups):
        members = groups[length]
        idx = torch.tensor([stories[m].prompt_ids for m in members], dtype=torch.long, device=device)
        steps = max(len(stories[m].truth_ids) for m in members)
        out = model.generate(idx, steps, temperature, top_k, seeded_generator(device, seed + length)).cpu()
        for row, member in enumerate(members):
            texts[member] = tokenizer.decode(out[row, length : length + len(stories[member].truth_ids)].tolist())
    return texts


def bigram_continuations(bigram: Bigram, tokenizer, stories: Sequence[HeldOutStory], temperature: float,
                         top_k: int | None, seed: int) -> list[str]:
    """The bigram baseline's continuation of each story, as many tokens as its truth."""
    rng = np.random.default_rng(seed)
    return [tokenizer.decode(bigram.sample(list(s.prompt_ids), len(s.truth_ids), temperature, rng, top_k))
            for s in stories]
