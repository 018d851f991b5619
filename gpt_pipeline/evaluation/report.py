"""An evaluation laid out for people: a Markdown table (model beside the true stories and the
bigram), a few continuations beside their true continuations, and the curve by position as a PNG
(matplotlib's Agg canvas on a ``Figure`` of its own, as ``tracking.plots``: no global state)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from gpt_pipeline.evaluation.evaluate import Evaluation
from gpt_pipeline.evaluation.metrics import METRICS
from gpt_pipeline.storage import atomic_write

SAMPLES_SHOWN = 5
FIGURE_INCHES = (6.4, 4.0)
LABELS = {
    "test_bits_per_character": "test bits per character (lower is better)",
    "distinct_1": "distinct-1", "distinct_2": "distinct-2", "distinct_3": "distinct-3",
    "repeated_4gram_rate": "repeated 4-gram rate", "unseen_word_rate": "words unseen in training",
    "sentence_end_rate": "continuations that end a sentence", "mean_sentence_length": "words per sentence",
    "rouge_l": "ROUGE-L F1 vs the true continuation",
}


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def table_rows(evaluation: Evaluation) -> list[tuple[str, float | None, float | None, float | None]]:
    """``(figure, model, true stories, bigram)`` for every figure of the table."""
    rows = [("test_bits_per_character", evaluation.model.bits_per_character, None,
             evaluation.bigram.bits_per_character)]
    rows += [(name, *(evaluation.texts[source][name] for source in ("model", "reference", "bigram")))
             for name in METRICS]
    return rows


def markdown_table(evaluation: Evaluation) -> str:
    """The figures as a Markdown table: one row per figure, columns model, true stories, bigram.

    The true stories' ROUGE-L is against another story's true continuation (the floor of an
    unrelated text, ``evaluate``'s docstring)."""
    lines = ["| figure | model | true stories | bigram |", "|---|---|---|---|"]
    for name, model, reference, bigram in table_rows(evaluation):
        lines.append(f"| {LABELS.get(name, name)} | {_cell(model)} | {_cell(reference)} | {_cell(bigram)} |")
    return "\n".join(lines)


def samples(evaluation: Evaluation, count: int = SAMPLES_SHOWN) -> list[dict[str, str]]:
    """The first ``count`` stories: ``prompt`` (the first sentence), ``model`` (its continuation)
    and ``truth`` (the true continuation)."""
    return [{"prompt": story.prompt, "model": model, "truth": story.truth}
            for story, model in zip(evaluation.stories[:count], evaluation.continuations["model"][:count])]


def samples_markdown(evaluation: Evaluation, count: int = SAMPLES_SHOWN) -> str:
    """``samples`` as a Markdown table (newlines shown as spaces, pipes escaped)."""
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")
    lines = ["| first sentence | model's continuation | true continuation |", "|---|---|---|"]
    lines += [f"| {cell(s['prompt'])} | {cell(s['model'])} | {cell(s['truth'])} |" for s in samples(evaluation, count)]
    return "\n".join(lines)


def position_curve_png(evaluation: Evaluation, path: str | os.PathLike, title: str = "test bits per character",
                       dpi: int = 100) -> Path:
    """Bits per character by position in the context window, the model's and the bigram's, as a
    PNG at ``path`` (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, likelihood in (("model", evaluation.model), ("bigram baseline", evaluation.bigram)):
        points = [(p, v) for p, v in enumerate(likelihood.curve) if math.isfinite(v)]
        axes.plot([p for p, _ in points], [v for _, v in points], marker="o", markersize=2, label=label)
    axes.set_xlabel("position in the context window (tokens of context - 1)")
    axes.set_ylabel("bits per character")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
