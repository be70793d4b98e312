"""Which device a computation runs on: the one asked for, else a tensor input's, else CUDA when present."""

from __future__ import annotations

from typing import Any

import torch


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None, data: Any = None) -> torch.device:
    """`device` when given; else the device of `data` when it is a tensor; else ``default_device()``."""
    if device is not None:
        return torch.device(device)
    if isinstance(data, torch.Tensor):
        return data.device
    return default_device()
