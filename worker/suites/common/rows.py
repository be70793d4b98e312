"""Row access that keeps a memory-mapped file out of the process's resident memory.

Slicing an np.memmap maps the file's pages into the process, and every page touched stays counted in its
RSS until the map is dropped: one pass over a 3 GB float16 file costs 3 GB of RSS. Reading the same rows
with pread() goes through the page cache instead, so a suite's footprint stays at one chunk. For any other
array (in memory, a torch tensor's numpy view, a Fortran-ordered map) these are plain slices.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _file_view(arr: np.ndarray) -> tuple[str, int, int] | None:
    """(filename, data offset, row bytes) for an original, C-ordered, 2-D memmap; None otherwise."""
    if not (isinstance(arr, np.memmap) and isinstance(getattr(arr, "base", None), mmap.mmap)):
        return None
    if arr.ndim != 2 or not arr.flags.c_contiguous or not arr.filename:
        return None
    return arr.filename, int(arr.offset), int(arr.shape[1]) * arr.dtype.itemsize


def _pread_into(fd: int, offset: int, buffer: memoryview) -> None:
    """Fill `buffer` from the file at `offset` with preadv: the bytes land in place, copied once."""
    done, nbytes = 0, len(buffer)
    while done < nbytes:
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got == 0:
            raise OSError(f"file ended {nbytes - done} bytes early while reading rows")
        done += got


def prefetched(reads: Iterator[Callable[[], np.ndarray]]) -> Iterator[np.ndarray]:
    """Run each read one step ahead on a helper thread (pread releases the GIL), so the next chunk comes off
    the disk or page cache while the caller computes on the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="repscope-read") as pool:
        pending = None
        for read in reads:
            nxt = pool.submit(read)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def _target(arr: np.ndarray, n: int, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty((n, arr.shape[1]), dtype=arr.dtype)
    if out.shape != (n, arr.shape[1]) or out.dtype != arr.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-ordered {arr.dtype} array of shape {(n, arr.shape[1])}")
    return out


def read_rows(arr: np.ndarray, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """arr[start:stop] as an in-memory array: a copy, into `out` when given (reused, e.g. pinned, buffers)."""
    view = _file_view(arr)
    if view is None:
        if out is None:
            return np.array(arr[start:stop], copy=True)
        out[...] = arr[start:stop]
        return out
    filename, offset, row_bytes = view
    out = _target(arr, stop - start, out)
    fd = os.open(filename, os.O_RDONLY)
    try:
        _pread_into(fd, offset + start * row_bytes, memoryview(out.reshape(-1).view(np.uint8)))
    finally:
        os.close(fd)
    return out


def take_rows(arr: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """arr[rows] for sorted row indices, reading each run of consecutive rows at once (into `out` if given)."""
    view = _file_view(arr)
    if view is None:
        if out is None:
            return np.array(arr[rows], copy=True)
        out[...] = arr[rows]
        return out
    filename, offset, row_bytes = view
    out = _target(arr, len(rows), out)
    flat = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    fd = os.open(filename, os.O_RDONLY)
    try:
        pos = 0
        for run in np.split(rows, breaks):
            if run.size == 0:
                continue
            nbytes = run.size * row_bytes
            _pread_into(fd, offset + int(run[0]) * row_bytes, flat[pos * row_bytes: pos * row_bytes + nbytes])
            pos += run.size
    finally:
        os.close(fd)
    return out
