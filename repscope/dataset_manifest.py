"""What pins a server folder's contents: a manifest hash over every file's relative path, size and mtime.

A registered folder (kind ``path``) can change under the same path, so the path alone cannot key cached
embeddings. The API hashes the folder's manifest when a checkpoint is uploaded; that hash enters the embed cache
key (repscope.cache), the upload's dedupe key and the evaluation params, and the worker recomputes it before it
embeds: a folder that changed in between fails the embed step instead of filling the cache with other images.
Lines, sorted by path: ``<relative posix path>\\0<size>\\0<mtime_ns>\\n`` for every regular file (symlinks
followed), hidden entries and __MACOSX skipped. Stat-only, so a rewrite that keeps both size and mtime is not seen
(``touch`` the file or re-register). Torch-free: the API imports it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST_VERSION = 1
MAX_FILES = 2_000_000  # as repscope.dataset_layouts.MAX_SCAN_FILES
SKIPPED = ("__MACOSX",)


class ManifestError(ValueError):
    """The folder cannot be listed (gone, unreadable, too many files)."""


@dataclass(frozen=True)
class Manifest:
    sha256: str
    files: int
    bytes: int

    @property
    def key(self) -> str:
        """The dataset-content hash used in cache keys: "manifest-v<version>:<sha256>"."""
        return f"manifest-v{MANIFEST_VERSION}:{self.sha256}"


def _walk(folder: str, rel: str, out: list[tuple[str, int, int]], max_files: int) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ManifestError(f"cannot list {folder!r} ({exc.strerror})") from None
    for entry in entries:
        if entry.name.startswith(".") or entry.name in SKIPPED:
            continue
        path = f"{rel}{entry.name}"
        try:
            if entry.is_dir(follow_symlinks=True):
                _walk(entry.path, f"{path}/", out, max_files)
            elif entry.is_file(follow_symlinks=True):
                st = entry.stat(follow_symlinks=True)
                out.append((path, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            raise ManifestError(f"cannot stat {path!r} in the dataset folder ({exc.strerror})") from None
        if len(out) > max_files:
            raise ManifestError(f"dataset folder holds more than {max_files} files")


def folder_manifest(folder: str | os.PathLike, *, max_files: int = MAX_FILES) -> Manifest:
    """The manifest hash of every file under ``folder`` (module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(f"dataset folder {str(root)!r} does not exist (any more) on this host")
    files: list[tuple[str, int, int]] = []
    _walk(str(root), "", files, max_files)
    digest = hashlib.sha256()
    for path, size, mtime in sorted(files):
        digest.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return Manifest(digest.hexdigest(), len(files), sum(size for _, size, _ in files))
