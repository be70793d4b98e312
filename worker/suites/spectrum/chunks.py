"""Rows of an N×D embedding matrix (ndarray, np.memmap or tensor) onto the device, a chunk at a time.

The Gram pass reads each row once, so a memory-mapped file of any N is never loaded whole: its rows are read
with pread (``common.rows``: the process's RSS stays one chunk) into two reused buffers, one chunk ahead of
the compute. In-memory numpy input on the CPU is viewed, not copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from worker.suites.common.arrays import matrix_shape, native
from worker.suites.common.rows import prefetched, read_rows, take_rows

CHUNK_ROWS = 8192  # rows per chunk of the Gram pass
# tensor dtypes numpy can view; others (bfloat16, integers) are converted to float64 first
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
_NUMPY_TORCH_FLOATS = (np.float16, np.float32, np.float64)


def check_rows(rows: np.ndarray | None, n: int) -> np.ndarray | None:
    """`rows` as a 1-D integer index array into [0, n) (None: every row); ValueError otherwise."""
    if rows is None:
        return None
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError("rows must be a 1-D array of integer row indices")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must lie in [0, {n})")
    return rows


def iter_chunks(
    embeddings: Any, rows: np.ndarray | None, device: torch.device, chunk_rows: int
) -> Iterator[torch.Tensor]:
    """Chunks of at most `chunk_rows` rows on `device`, in the data's own floating dtype (float64 for others),
    unchecked. A chunk may be a view of the caller's array or of a reused read buffer, valid until the next
    one is requested: callers copy it (and check finiteness), never write to it. Reads only those rows from a
    memmap, the next chunk while the current one is being computed on."""
    n = matrix_shape(embeddings, real=True)[0] if rows is None else len(rows)
    step = max(1, int(chunk_rows))
    bounds = [(a, min(n, a + step)) for a in range(0, n, step)]
    if isinstance(embeddings, torch.Tensor):
        yield from _tensor_chunks(embeddings, rows, device, bounds)
        return
    if rows is None and not isinstance(embeddings, np.memmap) and device.type == "cpu":
        for a, b in bounds:
            yield _view_tensor(np.ascontiguousarray(native(embeddings[a:b])))
        return
    yield from _read_chunks(embeddings, rows, device, bounds, min(step, n))


def _tensor_chunks(
    embeddings: torch.Tensor, rows: np.ndarray | None, device: torch.device, bounds: list[tuple[int, int]]
) -> Iterator[torch.Tensor]:
    for a, b in bounds:
        sel = slice(a, b) if rows is None else torch.as_tensor(rows[a:b], device=embeddings.device)
        x = embeddings[sel].detach().to(device=device)
        yield x if x.dtype in _NUMPY_FLOATS else x.to(torch.float64)  # bfloat16, integers: no numpy view


def _read_chunks(
    embeddings: np.ndarray,
    rows: np.ndarray | None,
    device: torch.device,
    bounds: list[tuple[int, int]],
    buffer_rows: int,
) -> Iterator[torch.Tensor]:
    """Copy to RAM (pread for a memmap: RSS stays one chunk) into two reused buffers — page-locked when the
    device is a GPU, so the host-to-device copy runs at full speed — read one chunk ahead of the compute."""
    buffers = _read_buffers(embeddings, buffer_rows, device)
    reads = ((lambda a=a, b=b, buf=buffers[i % 2][: b - a]: read_rows(embeddings, a, b, buf)) if rows is None
             else (lambda a=a, b=b, buf=buffers[i % 2][: b - a]: take_rows(embeddings, rows[a:b], buf))
             for i, (a, b) in enumerate(bounds))
    for part in prefetched(reads):
        yield torch.from_numpy(native(part)).to(device=device)


def _view_tensor(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without its warning for read-only arrays (np.load's, say): chunks are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _read_buffers(embeddings: np.ndarray, rows: int, device: torch.device) -> list[np.ndarray]:
    d, dtype = embeddings.shape[1], embeddings.dtype
    if device.type == "cuda" and dtype in _NUMPY_TORCH_FLOATS and dtype.isnative:
        return [torch.empty((rows, d), dtype=getattr(torch, dtype.name), pin_memory=True).numpy()
                for _ in range(2)]
    return [np.empty((rows, d), dtype=dtype) for _ in range(2)]
