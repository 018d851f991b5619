"""Figures that compare trainings across tokenizers: bits per character.

A mean cross-entropy per token (nats) depends on the vocabulary: a larger vocabulary puts more
characters in a token, so its loss per token is higher for the same model quality. Bits per
character divide the split's total information by its characters instead:

    bits_per_character = loss / ln 2 * tokens / characters

where ``tokens`` and ``characters`` are the split's totals (``characters``: the length of the
text those tokens decode to, as the tokenized dataset records it when it is written,
``gpt_pipeline.data.dataset_files``). Two trainings with different vocabularies on the same
stories are then comparable: the lower bits per character, the better the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bits_per_character(loss: float, tokens: int, characters: int) -> float | None:
    """``loss / ln 2 * tokens / characters``: the mean loss in nats per token of a split with
    ``tokens`` tokens and ``characters`` characters, as bits per character. None when the loss
    is not finite (a NaN loss of a non-zero rank) or the split has no characters.

    Example: a loss of ln 2 nats per token (one bit) on 100 tokens that spell 400 characters
    is a quarter of a bit per character; 2.0 nats on 3 tokens of 7 characters is
    2 / 0.6931 * 3 / 7 = 1.2366 bits per character.

        >>> bits_per_character(math.log(2), tokens=100, characters=400)
        0.25
        >>> round(bits_per_character(2.0, tokens=3, characters=7), 4)
        1.2366
        >>> bits_per_character(float("nan"), 3, 7) is None, bits_per_character(2.0, 0, 0) is None
        (True, True)
    """
    if tokens < 0 or characters < 0:
        raise ValueError(f"tokens and characters must be >= 0, got {tokens} and {characters}")
    if characters == 0 or loss is None or not math.isfinite(loss):
        return None
    return loss / math.log(2) * tokens / characters


def token_characters(token_texts: Sequence[str]) -> np.ndarray:
    """The number of characters of each token id (``token_texts[i]`` is the text of token i)."""
    return np.fromiter((len(t) for t in token_texts), dtype=np.int64, count=len(token_texts))


def characters_of(tokens: np.ndarray, lengths: np.ndarray) -> int:
    """The characters that ``tokens`` decode to, given each token id's length (``token_characters``):
    exact, because decoding concatenates the tokens' texts. Reads ``tokens`` once (a memory-mapped
    split is read, not copied).

    Example:
        >>> characters_of(np.array([0, 2, 2, 1], np.uint16), token_characters(["a", "bc", "def"]))
        9
    """
    counts = np.zeros(len(lengths), dtype=np.int64)
    step = 1 << 24
    for start in range(0, len(tokens), step):
        counts += np.bincount(np.asarray(tokens[start : start + step]), minlength=len(lengths))[: len(lengths)]
    return int(counts @ lengths)


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits, for reading (keep exact values elsewhere).

    Example:
        >>> significant(3.14159265), significant(12345.678), significant(0.000123456), significant(0.0)
        (3.142, 12350.0, 0.0001235, 0.0)
    """
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


# Decimal places each figure is shown with (everywhere: Dagster metadata, the champion's
# standings, the sweep's table, `gpt-pipeline compare`); any other figure gets 4.
FIGURE_DECIMALS = {"tokens_per_second": 0, "training_seconds": 1, "chars_per_token": 2}


def figure(name: str, value: float | int | None) -> float | int | None:
    """``value`` of the figure ``name`` rounded as it is shown (``FIGURE_DECIMALS``); None for a
    missing or non-finite value; a whole figure (0 decimals) as an int.

    Example:
        >>> figure("test_loss", 1.08163), figure("tokens_per_second", 37812.6), figure("test_loss", float("nan"))
        (1.0816, 37813, None)
    """
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
        return None
    decimals = FIGURE_DECIMALS.get(name, 4)
    return int(round(value)) if decimals == 0 else round(float(value), decimals)


def figure_text(name: str, value: float | int | None) -> str:
    """The figure ``name`` as text, the one way every table writes it: ``-`` when missing,
    thousands separated when whole.

    Example:
        >>> figure_text("test_loss", 1.0816349), figure_text("tokens_per_second", 37812.6), figure_text("x", None)
        ('1.0816', '37,813', '-')
        >>> figure_text("training_seconds", 62.25)
        '62.2'
    """
    shown = figure(name, value)
    if shown is None:
        return "-"
    return f"{shown:,}" if isinstance(shown, int) else f"{shown:.{FIGURE_DECIMALS.get(name, 4)}f}"


def evaluation_metrics(evaluation, tokens: dict[str, int], characters: dict[str, int] | None) -> dict[str, float | None]:
    """The figures of one evaluation (a ``training.loop.Evaluation``) to log: both losses, both
    bits per character (None without ``characters``), throughput (None before any step) and the
    learning rate. ``tokens`` and ``characters``: ``{"train": n, "test": m}`` of the splits.

    Example:
        >>> from gpt_pipeline.training.loop import Evaluation
        >>> e = Evaluation(10, train_loss=math.log(2), test_loss=2 * math.log(2), tokens_per_second=None,
        ...                elapsed_seconds=1.0, remaining_seconds=None, learning_rate=1e-3)
        >>> evaluation_metrics(e, {"train": 100, "test": 50}, {"train": 400, "test": 100})["test_bits_per_character"]
        1.0
    """
    figures: dict[str, float | None] = {"train_loss": evaluation.train_loss, "test_loss": evaluation.test_loss}
    for split in ("train", "test"):
        figures[f"{split}_bits_per_character"] = (
            bits_per_character(figures[f"{split}_loss"], tokens[split], characters[split]) if characters else None)
    figures["tokens_per_second"] = evaluation.tokens_per_second
    figures["learning_rate"] = evaluation.learning_rate
    return figures
