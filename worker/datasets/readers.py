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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from repscope import dataset_layouts as layouts
from repscope.datasets import DatasetError as LayoutDatasetError

from .builtin import ImageDataset, stratified_split
from .errors import DatasetError
from .npz import read_npz

__all__ = ["DatasetError", "check_zip_members", "read_dataset_file", "read_image_folder", "read_image_zip",
           "read_npz"]

MAX_MEMBERS = 200_000
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


def _layout(paths: Iterable[str]) -> list[tuple[str, int | None, str]]:
    """(path, split or None, class) for each image path of an ImageFolder tree: [wrapper/][train|test/]class/file.

    One top-level folder wrapping everything is skipped; top-level folders all in SPLIT_DIRS give the split.
    """
    files = []
    for p in paths:
        parts = PurePosixPath(p.replace("\\", "/")).parts
        if any(part.startswith(".") or part in IGNORED_PARTS for part in parts):
            continue
        if parts and parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            files.append((p, parts))
    if not files:
        raise DatasetError(f"no image files found (expected class folders of {', '.join(IMAGE_EXTENSIONS)})")
    depth = 0
    while len({parts[depth] for _, parts in files if len(parts) > depth + 1}) == 1 and all(
        len(parts) > depth + 2 for _, parts in files
    ):
        depth += 1  # a single wrapping folder
    tops = {parts[depth] for _, parts in files}
    by_split = all(len(parts) - depth == 3 for _, parts in files) and tops <= set(SPLIT_DIRS)
    out = []
    for p, parts in files:
        rel = parts[depth:]
        if by_split:
            out.append((p, SPLIT_DIRS[rel[0]], rel[1]))
        elif len(rel) == 2:
            out.append((p, None, rel[0]))
        else:
            raise DatasetError(f"{p!r} is not inside a class folder (expected <class>/<image> or "
                               f"<train|test>/<class>/<image>)")  # fmt: skip
    return sorted(out, key=lambda t: t[0])


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


@dataclass
class FolderItems:
    """The image files of a server folder (ImageFolder tree or DINOv2 layout), listed without decoding."""

    folder: Path  # resolved
    paths: list[str]  # relative to `folder`, sorted
    labels: np.ndarray  # int64
    split: np.ndarray  # int8, 0 train / 1 test
    classes: list[str]
    name: str


def _checked_folder(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> tuple[Path, Path]:
    """(folder, its root), both resolved; refused unless the folder lies under one of ``roots``."""
    if not roots:
        raise DatasetError("no dataset roots are configured on this worker; server folders are disabled")
    resolved_roots = [Path(r).resolve() for r in roots]
    try:
        folder = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise DatasetError(f"dataset folder {str(path)!r} does not exist") from e
    root = next((r for r in resolved_roots if folder.is_relative_to(r)), None)
    if root is None:
        raise DatasetError(f"dataset folder {str(path)!r} is outside the configured dataset roots")
    if not folder.is_dir():
        raise DatasetError(f"{str(path)!r} is not a folder")
    return folder, root


def folder_items(path: str | os.PathLike, roots: Sequence[str | os.PathLike], *, name: str | None = None,
                 max_members: int = MAX_MEMBERS) -> FolderItems | None:
    """The labelled image files of an ImageFolder / DINOv2 folder (every file, links resolved, under the root),
    or None for the other layouts (binaries, shards: read whole by read_image_folder)."""
    folder, root = _checked_folder(path, roots)
    try:
        fmt, layout_root = layouts.detect_layout(folder)
        if fmt in layouts.BINARY_SPECS or fmt == "webdataset":
            return None
        rel_paths = []
        for dirpath, dirnames, filenames in os.walk(folder):  # does not follow directory symlinks
            dirnames.sort()
            for fn in sorted(filenames):
                rel_paths.append(Path(dirpath, fn).relative_to(folder).as_posix())
                if len(rel_paths) > max_members:
                    raise DatasetError(f"folder has more than {max_members} files")
        wnid_names = layouts.dinov2_labels(layout_root, root) if fmt == "dinov2-imagenet" else None
        if wnid_names is None:
            items = _layout(rel_paths)
        else:  # DINOv2's ImageNet: train/<wnid>/, val/<wnid>/; test/ has no labels
            items, skipped = layouts.dinov2_items(rel_paths, layout_root.relative_to(folder).as_posix())
            log.info("DINOv2 layout %s: %d unlabelled test/ images skipped", folder, skipped)
    except LayoutDatasetError as e:
        raise DatasetError(str(e)) from None
    for rel, _, _ in items:  # every file, links resolved, must stay under the root (before any decoding)
        if not (folder / rel).resolve().is_relative_to(root):
            raise DatasetError(f"{rel!r} links outside the configured dataset roots")
    classes = sorted({c for _, _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, _, c in items], dtype=np.int64)
    splits = [s for _, s, _ in items]
    split = np.array(splits, dtype=np.int8) if all(s is not None for s in splits) else stratified_split(labels)
    names = layouts.class_names(classes, wnid_names) if wnid_names is not None else classes
    return FolderItems(folder, [p for p, _, _ in items], labels, split, names, name or folder.name)


def read_image_folder(
    path: str | os.PathLike,
    roots: Sequence[str | os.PathLike],
    *,
    name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    max_members: int = MAX_MEMBERS,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> ImageDataset:
    """A server folder decoded whole into one array (every image at the first one's size, or image_size);
    refused unless it lies (symlinks resolved) under one of ``roots``, and so must every file in it.
    worker.embed_stream embeds ImageFolder / DINOv2 folders image by image instead."""
    listed = folder_items(path, roots, name=name, max_members=max_members)
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
        img = _decode((listed.folder / rel).resolve().read_bytes(), rel, size, max_image_pixels)
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
