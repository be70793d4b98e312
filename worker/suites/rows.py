"""Row access that keeps a memory-mapped file out of the process's resident memory.

Slicing an np.memmap maps the file's pages into the process, and every page touched stays counted in its
RSS until the map is dropped: one pass over a 3 GB float16 file costs 3 GB of RSS. Reading the same rows
with pread() goes through the page cache instead, so a suite's footprint stays at one chunk. For any other
array (in memory, a torch tensor's numpy view, a Fortran-ordered map) these are plain slices.
"""

from __future__ import annotations

import mmap
import os

import numpy as np


def _file_view(arr: np.ndarray) -> tuple[str, int, int] | None:
    """(filename, data offset, row bytes) for an original, C-ordered, 2-D memmap; None otherwise."""
    if not (isinstance(arr, np.memmap) and isinstance(getattr(arr, "base", None), mmap.mmap)):
        return None
    if arr.ndim != 2 or not arr.flags.c_contiguous or not arr.filename:
        return None
    return arr.filename, int(arr.offset), int(arr.shape[1]) * arr.dtype.itemsize


def _pread(fd: int, offset: int, nbytes: int) -> bytes:
    parts, done = [], 0
    while done < nbytes:
        chunk = os.pread(fd, nbytes - done, offset + done)
        if not chunk:
            raise OSError(f"file ended {nbytes - done} bytes early while reading rows")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def read_rows(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """arr[start:stop] as an in-memory array (a copy)."""
    view = _file_view(arr)
    if view is None:
        return np.array(arr[start:stop], copy=True)
    filename, offset, row_bytes = view
    fd = os.open(filename, os.O_RDONLY)
    try:
        raw = _pread(fd, offset + start * row_bytes, (stop - start) * row_bytes)
    finally:
        os.close(fd)
    return np.frombuffer(raw, dtype=arr.dtype).reshape(stop - start, arr.shape[1]).copy()


def take_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """arr[rows] for sorted row indices, reading each run of consecutive rows at once."""
    view = _file_view(arr)
    if view is None:
        return np.array(arr[rows], copy=True)
    filename, offset, row_bytes = view
    out = np.empty((len(rows), arr.shape[1]), dtype=arr.dtype)
    flat = out.reshape(-1).view(np.uint8)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    fd = os.open(filename, os.O_RDONLY)
    try:
        pos = 0
        for run in np.split(rows, breaks):
            if run.size == 0:
                continue
            nbytes = run.size * row_bytes
            flat[pos * row_bytes: pos * row_bytes + nbytes] = np.frombuffer(
                _pread(fd, offset + int(run[0]) * row_bytes, nbytes), dtype=np.uint8)
            pos += run.size
    finally:
        os.close(fd)
    return out
