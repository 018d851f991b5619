"""Which torch device to train and sample on: ``auto`` picks CUDA, then MPS, then the CPU.

Nothing else: the training loop and the CLI call ``resolve_device`` with the configured name.
"""

from __future__ import annotations

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
