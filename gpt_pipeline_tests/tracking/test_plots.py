"""The loss-curve PNG: its size, that it draws something, and its errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from matplotlib.image import imread

from gpt_pipeline.tracking.plots import loss_curve_png


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_of_the_curves(tmp_path):
    path = loss_curve_png([(100, 3.1, 3.3), (0, 5.6, 5.7), (50, 4.0, float("nan"))], tmp_path / "plots" / "loss.png")
    assert path == tmp_path / "plots" / "loss.png"
    assert sorted(p.name for p in path.parent.iterdir()) == ["loss.png"]  # no temporary file left
    assert _png_size(path.read_bytes()) == (640, 400)
    pixels = imread(path)[..., :3]  # [400, 640, 3] floats in [0, 1]
    assert pixels.shape == (400, 640, 3)
    # matplotlib's first two colours (train blue #1f77b4, test orange #ff7f0e) are both drawn
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        close = np.abs(pixels - np.array(rgb) / 255).max(axis=-1) < 0.02
        assert close.sum() > 100, rgb


def test_bad_evaluations(tmp_path):
    with pytest.raises(ValueError, match="evaluations is empty"):
        loss_curve_png([], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"distinct and >= 0, got \[0, 0\]"):
        loss_curve_png([(0, 1.0, 1.0), (0, 2.0, 2.0)], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        loss_curve_png([(-1, 1.0, 1.0)], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_dpi_scales_the_picture(tmp_path):
    points = [(0, 5.6, 5.7), (20, 4.1, 4.3)]
    small = loss_curve_png(points, tmp_path / "small.png", dpi=60)
    full = loss_curve_png(points, tmp_path / "full.png")
    assert _png_size(small.read_bytes()) == (384, 240) and _png_size(full.read_bytes()) == (640, 400)
    assert small.stat().st_size < min(full.stat().st_size, 30_000)
