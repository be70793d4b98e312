"""Request bodies built from arrays as they are sent: no temporary file, no second copy in memory.

`.npy` (NEP 1) for embeddings alone; an uncompressed `.npz` (zip of .npy members, written by zipfile in
streaming mode with data descriptors and zip64) when labels, split, poison or views come along. The array's
own buffer is read through memoryview slices, so the only extra memory is one chunk.
"""

from __future__ import annotations

import io
import zipfile
from collections import deque
from collections.abc import Iterator

import numpy as np
from numpy.lib import format as npformat

CHUNK_BYTES = 1 << 20


def npy_header(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    npformat.write_array_header_2_0(buf, npformat.header_data_from_array_1_0(arr))
    return buf.getvalue()


def _array_chunks(arr: np.ndarray) -> Iterator[memoryview]:
    flat = memoryview(np.ascontiguousarray(arr)).cast("B")
    for start in range(0, len(flat), CHUNK_BYTES):
        yield flat[start:start + CHUNK_BYTES]


def npy_chunks(arr: np.ndarray) -> Iterator[bytes | memoryview]:
    yield npy_header(arr)
    yield from _array_chunks(arr)


class _Sink:
    """Write-only file object that zipfile writes into; the generator drains it between writes."""

    def __init__(self) -> None:
        self.parts: deque[bytes] = deque()

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def npz_chunks(arrays: dict[str, np.ndarray]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                for chunk in npy_chunks(arr):
                    member.write(chunk)
                    while sink.parts:
                        yield sink.parts.popleft()
    while sink.parts:
        yield sink.parts.popleft()


class ChunkReader:
    """A read()-able view of a chunk iterator, for httpx multipart file fields (sent chunked)."""

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += bytes(next(self._chunks))
            except StopIteration:
                break
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.sent += len(out)
        return out


def array_body(arrays: dict[str, np.ndarray]) -> tuple[str, ChunkReader]:
    """(filename, reader) for the arrays: a bare .npy when only embeddings travel, else an .npz."""
    if list(arrays) == ["embeddings"]:
        return "embeddings.npy", ChunkReader(npy_chunks(arrays["embeddings"]))
    return "embeddings.npz", ChunkReader(npz_chunks(arrays))
