"""Pictures for the MLflow runs: the train/test loss curve of a training as a PNG.

Drawn with matplotlib's Agg canvas on a ``Figure`` of its own (no pyplot, so no global backend
or figure state, safe in threads and servers). It does not log anything: the caller logs the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from gpt_pipeline.storage import atomic_write

FIGURE_INCHES = (6.4, 4.0)  # width, height
DPI = 100  # so the PNG is 640 x 400 pixels


def loss_curve_png(
    evaluations: Sequence[tuple[int, float, float]], path: str | os.PathLike, title: str = "loss",
    dpi: int = DPI, inches: tuple[float, float] = FIGURE_INCHES,
) -> Path:
    """Write the train and test loss against the step as a PNG at ``path`` (atomically).

    ``evaluations`` are ``(step, train_loss, test_loss)`` in any order (they are sorted by step);
    non-finite losses are left out of the curve. ``dpi`` scales the picture (``FIGURE_INCHES``
    times it: 640 x 400 pixels by default). Raises ``ValueError`` when there is none or a
    step is negative or repeated. ``inches``: the figure's width and height.

    Example:
        >>> import tempfile; d = tempfile.mkdtemp()
        >>> p = loss_curve_png([(0, 5.6, 5.7), (100, 3.1, 3.3)], f"{d}/loss_curve.png")
        >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = sorted((int(step), float(train), float(test)) for step, train, test in evaluations)
    if not points:
        raise ValueError("evaluations is empty: nothing to plot")
    steps = [p[0] for p in points]
    if steps[0] < 0 or len(set(steps)) != len(steps):
        raise ValueError(f"steps must be distinct and >= 0, got {steps}")
    figure = Figure(figsize=inches, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, label in ((1, "train"), (2, "test")):
        shown = [(p[0], p[index]) for p in points if math.isfinite(p[index])]
        axes.plot([s for s, _ in shown], [v for _, v in shown], marker="o", markersize=3, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
