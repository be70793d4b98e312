"""Read user image datasets: an .npz of arrays, an ImageFolder .zip, or a folder on the server.

All inputs are untrusted. .npz: ``np.load(allow_pickle=False)`` after checking the archive's declared sizes and
compression ratios (repscope.formats.check_npz_directory) and every .npy header against its member's size.
Zips are vetted from their central directory before any member is decompressed (``check_zip_members``):
no path traversal (``..``, absolute paths, drive letters), no symlinks, no encryption, at most
``max_members`` entries and ``max_expanded_bytes`` declared in total, and no member whose compression
ratio exceeds ``max_ratio`` (zip bombs; checked from ZIP_RATIO_MIN_BYTES up, since tiny files of constant
bytes legitimately compress well). Image headers are checked against ``max_image_pixels`` before
decoding. Server folders are only read under configured roots, with symlinks resolved; their layout
(ImageFolder, DINOv2's ImageNet, CIFAR-10/100 or STL-10 binaries, webdataset shards) is told by
repscope.dataset_layouts.

Decoding images needs Pillow (``pip install pillow``); .npz files do not.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import numpy as np

from repscope import dataset_layouts as layouts
from repscope.datasets import DatasetError as LayoutDatasetError

from .builtin import ImageDataset, stratified_split
from .errors import DatasetError
from .folders import (
    MAX_MEMBERS,
    FolderItems,
    _checked_folder,
    _layout,
    display_name,
    folder_items,
    item_bytes,
)
from .npz import read_npz

__all__ = ["DatasetError", "FolderItems", "folder_items", "check_zip_members", "read_dataset_file", "read_image_folder", "read_image_zip",
           "read_npz"]

MAX_EXPANDED_BYTES = 8 << 30
MAX_RATIO = 100.0
ZIP_RATIO_MIN_BYTES = 1 << 16
MAX_IMAGE_PIXELS = 4096 * 4096  # per decoded image
IMAGE_EXTENSIONS, SPLIT_DIRS, IGNORED_PARTS = layouts.IMAGE_EXTENSIONS, layouts.SPLIT_DIRS, layouts.IGNORED_PARTS
_DRIVE = re.compile(r"^[A-Za-z]:")
log = logging.getLogger(__name__)


def _unsafe_name(name: str) -> str | None:
    """Why a member name could escape the extraction root, or None when it is safe."""
    if "\x00" in name:
        return "contains a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(norm):
        return "has a drive letter"
    if ".." in PurePosixPath(norm).parts:
        return "contains '..'"
    return None


def check_zip_members(
    infos: Sequence[zipfile.ZipInfo],
    *,
    max_members: int = MAX_MEMBERS,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    max_ratio: float = MAX_RATIO,
) -> None:
    """Refuse a zip from its central directory alone (module docstring); raises DatasetError."""
    if len(infos) > max_members:
        raise DatasetError(f"zip has {len(infos)} members; at most {max_members} are accepted")
    total = 0
    for info in infos:
        why = _unsafe_name(info.filename)
        if why:
            raise DatasetError(f"zip member {info.filename!r} {why} (path traversal is not allowed)")
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise DatasetError(f"zip member {info.filename!r} is a symbolic link; links are not allowed")
        if info.flag_bits & 0x1:
            raise DatasetError(f"zip member {info.filename!r} is encrypted")
        total += info.file_size
        if total > max_expanded_bytes:
            raise DatasetError(f"zip expands to more than {max_expanded_bytes} bytes (declared sizes)")
        if info.file_size >= ZIP_RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DatasetError(f"zip member {info.filename!r} has compression ratio {ratio:.0f} "
                               f"(limit {max_ratio:.0f}): refusing a possible zip bomb")  # fmt: skip


# ---------------------------------------------------------------- ImageFolder layout


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise DatasetError(
            "reading image files needs Pillow, which this worker lacks (pip install pillow)"
        ) from e
    return Image


def _decode(data: bytes, what: str, size: tuple[int, int] | None, max_pixels: int) -> np.ndarray:
    Image = _pil()
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DatasetError(f"image {what!r} is {w} x {h}, more than the limit of {max_pixels} pixels")
            img = img.convert("RGB")
            if size is not None and (h, w) != size:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise DatasetError(f"cannot decode image {what!r}: {e}") from e


def _assemble(
    items: list[tuple[str, int | None, str]],
    read: Callable[[str], bytes],
    *,
    name: str,
    image_size: int | tuple[int, int] | None,
    max_image_pixels: int,
) -> ImageDataset:
    classes = sorted({c for _, _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = []
    for path, _, _ in items:
        img = _decode(read(path), path, size, max_image_pixels)
        size = size or img.shape[:2]  # the first image fixes the common size
        images.append(img)
    labels = np.array([index[c] for _, _, c in items], dtype=np.int64)
    if all(s is not None for _, s, _ in items):
        split = np.array([s for _, s, _ in items], dtype=np.int8)
    else:
        split = stratified_split(labels)
    return ImageDataset(np.stack(images), labels, split, classes, name)


def read_image_zip(
    path: str | os.PathLike,
    *,
    name: str = "upload",
    image_size: int | tuple[int, int] | None = None,
    max_members: int = MAX_MEMBERS,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    max_ratio: float = MAX_RATIO,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> ImageDataset:
    """An ImageFolder tree in a zip: ``class/img.png`` or ``train|test/class/img.png`` (split from the folders,
    else stratified 80/20 seed 0), every image RGB and resized (bilinear) to image_size or the first image's."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"not a valid zip file: {e}") from e
    with zf:
        infos = zf.infolist()
        check_zip_members(infos, max_members=max_members, max_expanded_bytes=max_expanded_bytes,
                          max_ratio=max_ratio)  # fmt: skip
        items = _layout(i.filename for i in infos if not i.is_dir())
        _pil()

        def read(member: str) -> bytes:
            try:
                return zf.read(member)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
                raise DatasetError(f"zip member {member!r} is corrupt: {e}") from e

        return _assemble(items, read, name=name, image_size=image_size, max_image_pixels=max_image_pixels)


def read_image_folder(
    path: str | os.PathLike,
    roots: Sequence[str | os.PathLike],
    *,
    name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    max_members: int = MAX_MEMBERS,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
) -> ImageDataset:
    """A server folder decoded whole into one array (every image at the first one's size, or image_size);
    refused unless it lies (symlinks resolved) under one of ``roots``, and so must every file in it.
    worker.embed_stream embeds ImageFolder / DINOv2 folders image by image instead."""
    listed = folder_items(path, roots, name=name, max_members=max_members, classes=classes, per_class=per_class)
    if listed is None:
        folder, root = _checked_folder(path, roots)
        name = name or folder.name
        try:
            fmt, layout_root = layouts.detect_layout(folder)
            if fmt in layouts.BINARY_SPECS:
                from .binaries import read_binary_dataset

                return read_binary_dataset(layout_root, fmt, root, name=name)
            from .shards import read_shards

            return read_shards(layout_root, root, name=name, decode=_decode, image_size=image_size,
                               max_image_pixels=max_image_pixels)
        except LayoutDatasetError as e:
            raise DatasetError(str(e)) from None
    _pil()
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = []
    for rel in listed.paths:
        img = _decode(item_bytes(listed.folder, rel), display_name(rel), size, max_image_pixels)
        size = size or img.shape[:2]  # the first image fixes the common size
        images.append(img)
    return ImageDataset(np.stack(images), listed.labels, listed.split, listed.classes, listed.name)


def read_dataset_file(path: str | os.PathLike, **kw) -> ImageDataset:
    """An uploaded dataset file: .npz (zip of .npy arrays) or an ImageFolder zip, told apart by content."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError("dataset upload must be an .npz or a zip of class folders of images") from e
    if names and all(n.endswith(".npy") for n in names):
        return read_npz(path, **{k: v for k, v in kw.items() if k in ("name", "max_expanded_bytes", "zip_limits")})
    return read_image_zip(path, **kw)
