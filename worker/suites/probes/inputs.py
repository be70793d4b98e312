"""The probes' inputs: integer labels, checked feature matrices, and rows of an embeddings file read in chunks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.suites.common.arrays import check_finite, matrix_shape, native, to_tensor
from worker.suites.common.rows import take_rows

LOAD_CHUNK_ROWS = 65_536  # rows read (and converted to float32) at a time: a memmap is never read whole


def as_labels(labels: Any) -> np.ndarray:
    """Labels (array or tensor, any shape) as a flat int64 array; ValueError unless they are integers
    (bool, or floats with integral values, are accepted)."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.ravel()
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise ValueError(f"labels must be integers, got dtype {y.dtype}")


def labels_list(a: np.ndarray) -> list[int]:
    """Label values as Python ints for JSON."""
    return [int(v) for v in np.asarray(a).ravel()]


def as_features(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A finite (m, D) `dtype` tensor on `device`; numpy input is copied when read-only (memmaps) or not
    C-ordered."""
    t = to_tensor(x, device, dtype)
    if t.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {tuple(t.shape)}")
    check_finite(t)
    return t


def load_rows(embeddings: Any, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """embeddings[rows] (sorted) as a finite float32 tensor on `device`, LOAD_CHUNK_ROWS rows at a time."""
    d = matrix_shape(embeddings)[1]
    out = torch.empty((rows.size, d), dtype=torch.float32, device=device)
    for a in range(0, rows.size, LOAD_CHUNK_ROWS):
        sel = rows[a : a + LOAD_CHUNK_ROWS]
        if isinstance(embeddings, torch.Tensor):
            part = embeddings[torch.as_tensor(sel, device=embeddings.device)].detach()
            out[a : a + sel.size] = part.to(device=device, dtype=torch.float32)
        else:
            part = take_rows(embeddings, sel)
            out[a : a + sel.size] = torch.from_numpy(native(part)).to(device=device).to(torch.float32)
    check_finite(out)
    return out
