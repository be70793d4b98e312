"""Content-addressed artifact store on a local (or shared) folder.

Uploads stream into `tmp/` while being hashed; a validated file is renamed to `objects/ab/cd/<sha256>.<ext>`.
The same bytes uploaded twice are stored once. Renames within one filesystem are atomic, so a reader never
sees a half-written object.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

_HOST = socket.gethostname().replace("-", "_")


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the size limit of {limit} bytes")
        self.limit = limit


@dataclass
class Received:
    """A file streamed into the temp area: path, sha256, size."""

    path: Path
    sha256: str
    size: int


class IncomingFile:
    """Writable sink for one uploaded file: write() chunks, then finish(); discard() on any failure."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self._limit = limit
        self._hash = hashlib.sha256()
        self._size = 0
        self._fh = open(path, "wb")  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise UploadTooLarge(self._limit)
        self._hash.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> Received:
        self._fh.close()
        return Received(self.path, self._hash.hexdigest(), self._size)

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / "tmp"
        self.objects = self.root / "objects"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    def incoming(self, limit: int) -> IncomingFile:
        # host and pid in the name let a restarted API tell its dead predecessor's files from live uploads
        return IncomingFile(self.tmp / f"upload-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}", limit)

    @staticmethod
    def key_for(sha256: str, ext: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def path(self, key: str) -> Path:
        path = (self.objects / key).resolve()
        if self.objects not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def commit(self, received: Received, ext: str) -> tuple[str, bool]:
        """Move a received file into place. Returns (key, created): created=False when the bytes were already stored."""
        key = self.key_for(received.sha256, ext)
        dest = self.path(key)
        if dest.is_file():
            received.path.unlink(missing_ok=True)
            return key, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received.path, dest)
        return key, True

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files left by a crashed API process (killed mid-upload): those of a process of this host
        that no longer runs, and any older than `older_than_s` (other hosts sharing the volume)."""
        import time

        removed = 0
        cutoff = time.time() - older_than_s
        for entry in self.tmp.iterdir():
            try:
                if _orphaned(entry.name) or entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def _orphaned(name: str) -> bool:
    parts = name.split("-")
    if len(parts) != 4 or parts[0] != "upload" or parts[1] != _HOST or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
