"""Continuations of held-out stories: each test story cut after its first sentence, continued by
the model (``GPT.generate``) and by the bigram baseline for as many tokens as the true rest.

``held_out_stories`` picks the stories evenly spread over the test split (a story without a
sentence end, or with no word after its first sentence, is passed over for the next one).
``model_continuations`` batches the generation through ``GPT.generate``, which takes prompts of
one length (``[B, T]``), in two phases. The model only ever sees the last ``context_length``
tokens (gpt-rs's window), so:

1. while the window fills, stories whose prompts have the same number of tokens are one batch,
   each generating until it knows ``context_length`` tokens (or its continuation is complete);
2. then every story still unfinished continues in one batch from its last ``context_length``
   tokens: what the model sees from there on no longer depends on the prompt's length.

A phase-1 batch generates as many tokens as its longest need, each row cut to its own length
(sampling is sequential: a cut row is what a shorter generation would have drawn); phase 2 runs
until the row with the least left is done, drops the rows that are, and goes on with the others
(each call starts with a whole window, as every step of that phase does anyway). Phase 1's batch
of prompt length L samples from a generator seeded with ``seed + L``, phase 2 from one seeded
with ``seed - 1``: the same stories, model and seed give the same continuations.
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
from gpt_pipeline.model.sampling import seeded_generator


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
    context = model.config.context_length
    device = model.linear_head.weight.device
    known = [list(s.prompt_ids) for s in stories]  # each story's tokens so far
    needed = [len(s.truth_ids) for s in stories]
    groups: dict[int, list[int]] = defaultdict(list)
    for position, story in enumerate(stories):
        if len(story.prompt_ids) < context:  # phase 1: until the window is full
            groups[len(story.prompt_ids)].append(position)
    for length in sorted(groups):
        members = groups[length]
        steps = min(context - length, max(needed[m] for m in members))
        _extend(model, known, members, steps, temperature, top_k, seeded_generator(device, seed + length))

    def remaining(p: int) -> int:
        return needed[p] - (len(known[p]) - len(stories[p].prompt_ids))

    generator = seeded_generator(device, seed - 1)
    active = [p for p in range(len(stories)) if remaining(p) > 0]
    while active:  # phase 2: one batch from the last context_length tokens of each, less each finished row
        _extend(model, known, active, min(map(remaining, active)), temperature, top_k, generator, window=context)
        active = [p for p in active if remaining(p) > 0]
    return [tokenizer.decode(known[p][len(s.prompt_ids) : len(s.prompt_ids) + needed[p]])
            for p, s in enumerate(stories)]


def _extend(model, known: list[list[int]], members: list[int], steps: int, temperature: float,
            top_k: int | None, generator: torch.Generator, window: int | None = None) -> None:
    """Generate ``steps`` tokens after each member's last ``window`` tokens (all, when None: the
    members' token counts are equal then) in one ``GPT.generate`` call; append to ``known``."""
    if steps <= 0:
        return
    rows = [known[m][-window:] if window else known[m] for m in members]
    idx = torch.tensor(rows, dtype=torch.long, device=model.linear_head.weight.device)
    out = model.generate(idx, steps, temperature, top_k, generator).cpu()
    for row, member in enumerate(members):
        known[member].extend(out[row, idx.size(1):].tolist())


def bigram_continuations(bigram: Bigram, tokenizer, stories: Sequence[HeldOutStory], temperature: float,
                         top_k: int | None, seed: int) -> list[str]:
    """The bigram baseline's continuation of each story, as many tokens as its truth."""
    rng = np.random.default_rng(seed)
    return [tokenizer.decode(bigram.sample(list(s.prompt_ids), len(s.truth_ids), temperature, rng, top_k))
            for s in stories]
