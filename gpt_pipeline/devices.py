"""Which torch device to train and sample on (``auto`` picks CUDA, then MPS, then the CPU), and
how many CPU threads a training takes.

The training loop and the CLI call ``resolve_device`` with the configured name, and
``training_threads`` with the configured thread count.
"""

from __future__ import annotations

import os
import re

import torch


def resolve_device(device: str = "auto", check_available: bool = True) -> torch.device:
    """``"auto"``: cuda, then mps, then cpu; otherwise the named device, which must exist.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if check_available and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if check_available and device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    return torch.device(device)


TRAININGS_AT_ONCE_ENV = "GPT_PIPELINE_TRAININGS_AT_ONCE"  # a user's override of the pool's limit


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def training_threads(requested: int = 0, at_once: int | None = None, cores: int | None = None) -> int:
    """CPU threads for one training: ``requested`` when above 0, else the cores divided by the
    trainings that run at the same time on this machine (``at_once``, by default
    ``$GPT_PIPELINE_TRAININGS_AT_ONCE``, else 1), at least one.

    Oversubscribed OpenMP threads spin, so that trainings side by side with too many threads
    each are slower than with their share (docs/benchmarks.md).

    Example:
        >>> training_threads(0, at_once=3, cores=16), training_threads(0, at_once=4, cores=2)
        (5, 1)
        >>> training_threads(6, at_once=3, cores=16)
        6
    """
    if requested > 0:
        return requested
    if at_once is None:
        at_once = trainings_at_once_declared() or 1
    return max(1, (cores or cpu_cores()) // max(1, at_once))


def trainings_at_once_declared() -> int | None:
    """``$GPT_PIPELINE_TRAININGS_AT_ONCE`` when it is a positive integer, else None."""
    raw = os.environ.get(TRAININGS_AT_ONCE_ENV, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None
