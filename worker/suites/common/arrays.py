"""Array plumbing shared by the suites: shape and dtype checks, numpy -> torch, finite checks, JSON lists.

NORMALIZE_EPS is torch.nn.functional.normalize's default: ẑ = z / max(‖z‖, 1e-12).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NORMALIZE_EPS = 1e-12
NON_FINITE = "embeddings contain NaN or infinite values"
_TORCH_FLOATS = (np.float16, np.float32, np.float64)


def matrix_shape(embeddings: Any, *, real: bool = False) -> tuple[int, int]:
    """(N, D) of a 2-D array or tensor; ValueError otherwise. With `real`, also TypeError unless the dtype is
    a real number type (bool and complex refused)."""
    shape = tuple(embeddings.shape)
    if len(shape) != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) matrix, got shape {shape}")
    if real:
        dtype = embeddings.dtype
        if isinstance(embeddings, torch.Tensor):
            ok = dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool)
        else:
            ok = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
        if not ok:
            raise TypeError(f"embeddings must be real numbers, got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def native(arr: np.ndarray) -> np.ndarray:
    """An array torch.from_numpy accepts: native byte order and float16/32/64 kept, anything else float64."""
    if arr.dtype in _TORCH_FLOATS and arr.dtype.isnative:
        return arr
    return arr.astype(np.float64)


def to_tensor(x: Any, device: torch.device, dtype: torch.dtype, *, copy: bool = False) -> torch.Tensor:
    """x as a `dtype` tensor on `device`, unchecked. numpy input is copied when `copy`, or when it is read-only
    (a memmap) or not C-ordered; otherwise the tensor may share its memory (never write to it)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    arr = np.asarray(x)
    if copy or not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True)
    return torch.from_numpy(native(arr)).to(device=device, dtype=dtype)


def check_finite(x: torch.Tensor, message: str = NON_FINITE) -> None:
    """ValueError(message) when x holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(message)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖, 1e-12) per row (torch.nn.functional.normalize, bit for bit)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)


def to_list(a: Any, *, nonfinite_as_none: bool = False) -> list[Any]:
    """Flattened values as Python floats for JSON figures. NaN and ±inf are kept as floats, or become None
    with `nonfinite_as_none` (strict JSON has no NaN)."""
    values = np.asarray(a, dtype=np.float64).ravel()
    if nonfinite_as_none:
        return [float(v) if np.isfinite(v) else None for v in values]
    return [float(v) for v in values]
