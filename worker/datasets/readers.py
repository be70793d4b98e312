"""Read user image datasets: an .npz of arrays, an ImageFolder .zip, or a folder on the server.

All inputs are untrusted. .npz: ``np.load(allow_pickle=False)`` after checking the archive's declared sizes and
compression ratios (repscope.formats.check_npz_directory) and every .npy header against its member's size.
Zips are vetted from their central directory before any member is decompressed (``check_zip_members``):
no path traversal (``..``, absolute paths, drive letters), no symlinks, no encryption, at most
``max_members`` entries and ``max_expanded_bytes`` declared in total, and no member whose compression
ratio exceeds ``max_ratio`` (zip bombs; checked from ZIP_RATIO_MIN_BYTES up, since tiny files of constant
bytes legitimately compress well). Image headers are checked against ``max_image_pixels`` before
decoding. Server folders are only read under configured roots, with symlinks resolved.

Decoding images needs Pillow (``pip install pillow``); .npz files do not.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from repscope.formats import FormatError, ZipLimits, _npz_member, check_npz_directory

from .builtin import ImageDataset, stratified_split

MAX_MEMBERS = 200_000
MAX_EXPANDED_BYTES = 8 << 30
MAX_RATIO = 100.0
ZIP_RATIO_MIN_BYTES = 1 << 16
MAX_IMAGE_PIXELS = 4096 * 4096  # per decoded image
MAX_NPZ_MEMBERS = 16
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff")
SPLIT_DIRS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 1}
IGNORED_PARTS = ("__MACOSX",)
_DRIVE = re.compile(r"^[A-Za-z]:")


class DatasetError(ValueError):
    """An unusable dataset upload; the message names the problem in plain words (becomes the 4xx detail)."""


# ---------------------------------------------------------------- .npz


def _check_npz_archive(path, max_expanded_bytes: int, zip_limits: ZipLimits | None = None) -> None:
    """The API's checks again (defence in depth), before np.load allocates anything: the directory's declared
    total and per-member ratios, then every .npy header against its member's declared size."""
    limits = zip_limits or ZipLimits.from_settings()
    limits = replace(limits, max_expanded_bytes=min(limits.max_expanded_bytes, max_expanded_bytes))
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise DatasetError(f".npz has {len(infos)} arrays; at most {MAX_NPZ_MEMBERS} are accepted")
            check_npz_directory(infos, limits)
            for info in infos:
                _npz_member(path, zf, info, info.filename)
    except DatasetError:
        raise
    except FormatError as e:
        raise DatasetError(f"invalid .npz: {e}") from e
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"not a valid .npz (zip) file: {e}") from e


def _as_split(raw: np.ndarray, n: int) -> np.ndarray:
    if raw.ndim != 1 or len(raw) != n:
        raise DatasetError(f"split must be a 1-D array of {n} entries, got shape {raw.shape}")
    if raw.dtype.kind not in "iub":
        raise DatasetError(f"split must be integers 0 (train) / 1 (test), got dtype {raw.dtype}")
    bad = raw[(raw != 0) & (raw != 1)]
    if bad.size:
        raise DatasetError(f"split must contain only 0 (train) and 1 (test); found {bad[0]}")
    return raw.astype(np.int8)


def read_npz(
    path: str | os.PathLike,
    *,
    name: str = "upload",
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    zip_limits: ZipLimits | None = None,
) -> ImageDataset:
    """``images`` uint8 N x H x W x C (C in {1, 3}; N x H x W is read as C = 1), ``labels`` integer N,
    optional ``split`` (0 train / 1 test; default stratified 80/20, seed 0) and ``classes`` (strings).
    `zip_limits` default: ZipLimits.from_settings(), the worker's REPSCOPE_* settings."""
    _check_npz_archive(path, max_expanded_bytes, zip_limits)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise DatasetError(f".npz lacks {sorted(missing)}; it has {sorted(keys)}")
            images, labels = z["images"], z["labels"]
            split = z["split"] if "split" in keys else None
            classes = z["classes"] if "classes" in keys else None
    except DatasetError:
        raise
    except ValueError as e:  # object arrays refused by allow_pickle=False, corrupt headers
        raise DatasetError(f"invalid .npz: {e}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DatasetError(f"invalid .npz: {e}") from e
    if images.dtype != np.uint8:
        raise DatasetError(f"images must be uint8 (0-255), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DatasetError(f"images must be N x H x W x C with C = 1 or 3, got shape {images.shape}")
    n = images.shape[0]
    if n < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise DatasetError(f"images must hold at least one non-empty image, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != n:
        raise DatasetError(
            f"labels must be a 1-D array of {n} entries (one per image), got shape {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DatasetError("labels must be non-negative class indices")
    labels = labels.astype(np.int64)
    split = stratified_split(labels) if split is None else _as_split(split, n)
    n_classes = int(labels.max()) + 1
    if classes is None:
        names = [str(i) for i in range(n_classes)]
    else:
        if classes.dtype.kind not in "US" or classes.ndim != 1 or len(classes) < n_classes:
            raise DatasetError(f"classes must be a 1-D string array with at least {n_classes} names")
        names = [str(c) for c in classes.tolist()]
    return ImageDataset(np.ascontiguousarray(images), labels, split, names, name)


# ---------------------------------------------------------------- zip guards


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


def read_image_folder(
    path: str | os.PathLike,
    roots: Sequence[str | os.PathLike],
    *,
    name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    max_members: int = MAX_MEMBERS,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> ImageDataset:
    """An ImageFolder directory on the worker's file system; refused unless it lies (symlinks resolved)
    under one of ``roots``, and so must every file in it."""
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
    rel_paths = []
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow directory symlinks
        dirnames.sort()
        for fn in sorted(filenames):
            rel_paths.append(Path(dirpath, fn).relative_to(folder).as_posix())
            if len(rel_paths) > max_members:
                raise DatasetError(f"folder has more than {max_members} files")
    items = _layout(rel_paths)
    real_paths = {}
    for rel, _, _ in items:  # every file, links resolved, must stay under the root (before any decoding)
        real = (folder / rel).resolve()
        if not real.is_relative_to(root):
            raise DatasetError(f"{rel!r} links outside the configured dataset roots")
        real_paths[rel] = real
    _pil()

    def read(rel: str) -> bytes:
        return real_paths[rel].read_bytes()

    return _assemble(items, read, name=name or folder.name, image_size=image_size,
                     max_image_pixels=max_image_pixels)  # fmt: skip


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
