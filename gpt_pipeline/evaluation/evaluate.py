"""One model's evaluation: likelihood and continuations, each figure beside the true stories' and
a bigram baseline's, and the collapse gate.

``evaluate`` fits the bigram on the train split, reads the training split's words (the
vocabulary that makes a word "unseen"), measures both likelihoods on the test split
(``likelihood``), continues held-out test stories with the model and the bigram
(``continuations``), and computes the text metrics (``metrics``) for three sets of texts:

- ``model``: the model's continuations, ROUGE-L against each story's true continuation;
- ``reference``: the true continuations themselves; their ROUGE-L is against the true
  continuation of the *next* held-out story (what an unrelated story shares with it: the floor
  an actual continuation must rise above), since against itself it would be 1;
- ``bigram``: the bigram baseline's continuations, ROUGE-L against the true continuation.

``collapse_gate`` is the blocking check: the model's repeated 4-gram rate and unseen-word rate may
exceed the true continuations' by at most the configured margins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.evaluation.continuations import (HeldOutStory, bigram_continuations, held_out_stories,
                                                   model_continuations)
from gpt_pipeline.evaluation.likelihood import Bigram, Likelihood, likelihoods
from gpt_pipeline.evaluation.metrics import METRICS, text_metrics, words
from gpt_pipeline.quality import Gate

SOURCES = ("model", "reference", "bigram")
_VOCABULARY_CHUNK = 256  # stories decoded at a time when reading the training split's words


@dataclass
class Evaluation:
    """What ``evaluate`` measured (``figures``: its flat form, for MLflow and metadata)."""

    model: Likelihood
    bigram: Likelihood
    stories: list[HeldOutStory]
    continuations: dict[str, list[str]]  # "model", "bigram": one text per story
    texts: dict[str, dict[str, float | None]]  # SOURCES -> METRICS -> value
    seconds: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float | None]:
        """Flat figures: ``test_bits_per_character`` and ``bigram_test_bits_per_character``,
        then each text metric as ``<metric>`` (the model's), ``reference_<metric>`` and
        ``bigram_<metric>``, and ``stories``."""
        flat: dict[str, float | None] = {
            "test_bits_per_character": self.model.bits_per_character,
            "bigram_test_bits_per_character": self.bigram.bits_per_character,
            "stories": float(len(self.stories)),
        }
        for source in SOURCES:
            prefix = "" if source == "model" else f"{source}_"
            flat.update({prefix + name: self.texts[source][name] for name in METRICS})
        return flat


def training_vocabulary(train: TokenArray, tokenizer) -> set[str]:
    """Every word of the training split's stories (decoded a few hundred at a time; a newline
    between two stories keeps their words apart)."""
    texts = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
    found: set[str] = set()
    for first in range(0, len(train), _VOCABULARY_CHUNK):
        last = min(first + _VOCABULARY_CHUNK, len(train))
        chunk = "\n".join("".join([texts[t] for t in train.story(i).tolist()]) for i in range(first, last))
        found.update(words(chunk))
    return found


def evaluate(model, tokenizer, train: TokenArray, test: TokenArray, config: EvaluationConfig) -> Evaluation:
    """Evaluate ``model`` (see the module docstring). ``ValueError`` when the model and the
    tokenizer do not belong together or the test split has no story to continue."""
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size {model.config.vocab_size} does not match the tokenizer's "
                         f"{tokenizer.vocab_size} tokens: they come from different trainings")
    seconds, started = {}, time.perf_counter()
    bigram = Bigram.fit(train, tokenizer.vocab_size)
    known = training_vocabulary(train, tokenizer)
    seconds["baseline"] = time.perf_counter() - started
    started = time.perf_counter()
    lengths = np.array([len(tokenizer.token_text(i)) for i in range(tokenizer.vocab_size)], np.int64)
    model_likelihood, bigram_likelihood = likelihoods(model, bigram, test, lengths, config.max_windows)
    seconds["likelihood"] = time.perf_counter() - started
    started = time.perf_counter()
    stories = held_out_stories(test, tokenizer, config.stories, config.max_continuation_tokens)
    if not stories:
        raise ValueError("the test split has no story with a first sentence and more after it to continue")
    written = {
        "model": model_continuations(model, tokenizer, stories, config.temperature, config.top_k, config.seed),
        "bigram": bigram_continuations(bigram, tokenizer, stories, config.temperature, config.top_k, config.seed),
    }
    seconds["continuations"] = time.perf_counter() - started
    started = time.perf_counter()
    truths = [s.truth for s in stories]
    unrelated = truths[1:] + truths[:1]
    texts = {
        "model": text_metrics(written["model"], truths, known),
        "reference": text_metrics(truths, unrelated, known),
        "bigram": text_metrics(written["bigram"], truths, known),
    }
    seconds["metrics"] = time.perf_counter() - started
    return Evaluation(model_likelihood, bigram_likelihood, stories, written, texts, seconds)


def collapse_gate(evaluation: Evaluation, config: EvaluationConfig) -> Gate:
    """Passes unless the model's continuations repeat 4-grams, or use words the training split
    never had, far more often than the true continuations do (``config``'s margins).

    Example:
        >>> from gpt_pipeline.evaluation.likelihood import Likelihood
        >>> flat = Likelihood(1.0, [], 1)
        >>> def made(rep, unseen):
        ...     texts = {s: {"repeated_4gram_rate": 0.02, "unseen_word_rate": 0.01} for s in SOURCES}
        ...     texts["model"] = {"repeated_4gram_rate": rep, "unseen_word_rate": unseen}
        ...     return Evaluation(flat, flat, [], {}, texts)
        >>> config = EvaluationConfig(max_repeated_4gram_excess=0.15, max_unseen_word_excess=0.1)
        >>> collapse_gate(made(0.05, 0.03), config).passed, collapse_gate(made(0.4, 0.03), config).passed
        (True, False)
        >>> print(collapse_gate(made(0.05, 0.3), config).description)
        unseen-word rate 0.3 is 0.29 above the true continuations' 0.01 (at most 0.1)
    """
    model, reference = evaluation.texts["model"], evaluation.texts["reference"]
    limits = {"repeated_4gram_rate": ("repeated 4-gram rate", config.max_repeated_4gram_excess),
              "unseen_word_rate": ("unseen-word rate", config.max_unseen_word_excess)}
    figures: dict[str, float] = {}
    problems = []
    for name, (words_, limit) in limits.items():
        value, base = model.get(name), reference.get(name)
        if value is None:
            problems.append(f"the continuations have no {words_} (no words written)")
            continue
        base = base or 0.0
        figures.update({name: value, f"reference_{name}": base, f"max_{name}_excess": limit})
        if value - base > limit:
            problems.append(f"{words_} {value:.3g} is {value - base:.3g} above the true continuations' "
                            f"{base:.3g} (at most {limit:.3g})")
    if problems:
        return Gate(False, "; ".join(problems), figures)
    return Gate(True, "repeated 4-gram and unseen-word rates within "
                f"{config.max_repeated_4gram_excess:.3g} and {config.max_unseen_word_excess:.3g} of the "
                "true continuations'", figures)
