"""Image datasets on the wire: the built-in catalogue and the checks an uploaded dataset must pass.

Standard library and numpy only (the API imports this). Two upload formats:
- `.npz` with `images` (uint8, N x H x W x C, C in {1, 3}), `labels` (integer, N) and optional `split` (0/1, N)
- ImageFolder `.zip`: one folder per class holding PNG/JPEG/BMP/GIF/WebP files (one common top folder allowed)
Archives are untrusted: member names that climb out (`..`, absolute, drive letters), symlinks, too many
members, a declared expanded size over the limit and per-member compression ratios typical of zip bombs are
refused before anything is extracted. The worker decodes images; the same guards run there again.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from repscope.formats import FormatError, ZipLimits, _check_zip_names, _npz_member, check_npz_directory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")
MAX_COMPRESSION_RATIO = 100
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# what zipfile, zlib and numpy raise on a hostile archive besides BadZipFile: an unsupported zip version or flag,
# a seek to a negative offset, an empty or non-UTF-8 member name, a stream that ends early or does not inflate
ZIP_DAMAGE = (NotImplementedError, OSError, EOFError, ValueError, IndexError, zlib.error, lzma.LZMAError)
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class DatasetError(ValueError):
    """The dataset file is invalid or unsafe; the message names the problem (becomes a 4xx)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    n: int | None
    image_shape: tuple[int, int, int] | None
    classes: tuple[str, ...]


BUILTIN_DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", "scikit-learn's handwritten digits (1 797 images, 8x8) upsampled to 32x32 RGB "
                                    "uint8, 80/20 stratified split; embedded with the checkpoint's own eval transform "
                                    "(resize, crop, mean/std from its config)",
                          1797, (32, 32, 3), tuple(str(i) for i in range(10))),
    "shapes": DatasetSpec("shapes", "procedural shapes with every generative factor stored (class, colour, size, "
                                    "position, rotation); 32x32 RGB uint8 generated with a fixed seed; embedded with "
                                    "the checkpoint's own eval transform", 6000, (32, 32, 3),
                          ("circle", "square", "triangle", "cross", "ring", "star")),
}


@dataclass(frozen=True)
class DatasetLimits:
    max_images: int = 2_000_000
    max_members: int = 200_000
    max_expanded_bytes: int = 20 * 1024**3
    max_image_bytes: int = 50 * 1024**2
    npz: ZipLimits | None = None  # an .npz's total (with max_expanded_bytes) and ratio; None: from the settings


@dataclass
class DatasetInfo:
    format: str  # npz | imagefolder
    n: int
    image_shape: list[int] | None  # H, W, C (npz); None for an ImageFolder (decoded and resized by the worker)
    classes: list[str]
    has_split: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


def check_dataset_name(name: str) -> str:
    if not DATASET_NAME.match(name or ""):
        raise DatasetError("dataset name must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def inspect_dataset(path: str | os.PathLike, filename: str | None = None,
                    limits: DatasetLimits = DatasetLimits()) -> DatasetInfo:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if names and all(n.endswith(".npy") for n in names):
                return _inspect_npz(path, zf, limits)
            return _inspect_image_folder(zf, limits)
    except zipfile.BadZipFile:
        raise DatasetError("dataset must be an .npz (images, labels) or an ImageFolder .zip; this file is "
                           "neither (or is truncated)") from None
    except DatasetError:
        raise
    except ZIP_DAMAGE as exc:
        raise DatasetError(f"dataset archive is damaged or unsupported ({type(exc).__name__}: {exc})") from None


def npz_limits(limits: DatasetLimits) -> ZipLimits:
    """The zip limits of a dataset .npz: the settings' ratio, and the smaller of the two expanded totals."""
    npz = limits.npz or ZipLimits.from_settings()
    return replace(npz, max_expanded_bytes=min(npz.max_expanded_bytes, limits.max_expanded_bytes))


def _inspect_npz(path, zf: zipfile.ZipFile, limits: DatasetLimits) -> DatasetInfo:
    try:
        _check_zip_names(zf.infolist(), 16)
        check_npz_directory(zf.infolist(), npz_limits(limits))  # from the directory, before any header is read
    except FormatError as exc:
        raise DatasetError(f"dataset {exc}") from None
    try:
        members = {i.filename.removesuffix(".npy"): _npz_member(path, zf, i, i.filename.removesuffix(".npy"))
                   for i in zf.infolist()}
    except (ValueError, EOFError, zlib.error) as exc:  # FormatError, or numpy / zlib on a damaged member
        raise DatasetError(f"invalid dataset .npz: {exc}") from None
    images, labels = members.get("images"), members.get("labels")
    if images is None:
        raise DatasetError("dataset .npz needs an 'images' array (uint8, N x H x W x C)")
    if labels is None:
        raise DatasetError("dataset .npz needs a 'labels' array (integer class per image)")
    if len(images.shape) != 4 or images.shape[3] not in (1, 3):
        raise DatasetError(f"'images' must be uint8 N x H x W x C with C = 1 or 3; got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        raise DatasetError(f"'images' must be uint8; got {images.dtype}")
    n = images.shape[0]
    if n < 1 or n > limits.max_images:
        raise DatasetError(f"dataset has {n} images; between 1 and {limits.max_images} are accepted")
    if labels.shape != (n,) or labels.dtype.kind not in "iu":  # from the header: nothing loaded yet
        raise DatasetError(f"'labels' must be an integer array of length {n}; got {labels.dtype} {labels.shape}")
    label_values = _load(labels, "labels")
    if label_values.size and label_values.min() < 0:
        raise DatasetError(f"'labels' must be non-negative class indices; found {label_values.min()}")
    has_split = "split" in members
    if has_split:
        if members["split"].shape != (n,):
            raise DatasetError(f"'split' must hold {n} values, each 0 (train) or 1 (test)")
        split = _load(members["split"], "split")
        if not np.isin(split, (0, 1)).all():
            raise DatasetError(f"'split' must hold {n} values, each 0 (train) or 1 (test)")
    classes = [str(c) for c in np.unique(label_values)]
    return DatasetInfo("npz", n, list(images.shape[1:]), classes, has_split)


def _load(member, key: str) -> np.ndarray:  # noqa: ANN001 - a repscope.formats._Member
    """A small array's values; a stream that ends early or does not inflate is the file's problem."""
    try:
        return np.asarray(member.load())
    except (ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DatasetError(f"invalid dataset .npz: '{key}' is unreadable: {exc}") from None


def safe_member(info: zipfile.ZipInfo) -> str | None:
    """The problem with a member's name or type, or None when it is safe to extract."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        return f"zip member {name!r} has an absolute or Windows path"
    if any(part == ".." for part in name.split("/")):
        return f"zip member {name!r} climbs out of the archive ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"zip member {name!r} is a symbolic link"
    return None


def _unreadable(info: zipfile.ZipInfo) -> str | None:
    """Why a member cannot be read without a password or a codec this Python lacks, or None."""
    if info.flag_bits & 0x1:
        return f"zip member {info.filename!r} is encrypted"
    if info.compress_type not in ZIP_METHODS:
        return f"zip member {info.filename!r} uses an unsupported compression method ({info.compress_type})"
    return None


def _inspect_image_folder(zf: zipfile.ZipFile, limits: DatasetLimits) -> DatasetInfo:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DatasetError(f"archive has {len(infos)} members; at most {limits.max_members} are accepted")
    total = 0
    images: list[zipfile.ZipInfo] = []
    for info in infos:
        problem = safe_member(info) or _unreadable(info)
        if problem:
            raise DatasetError(problem)
        if info.is_dir() or info.filename.split("/")[-1].startswith("."):
            continue
        total += info.file_size
        if total > limits.max_expanded_bytes:
            raise DatasetError(f"archive expands to more than {limits.max_expanded_bytes} bytes")
        if info.file_size > limits.max_image_bytes:
            raise DatasetError(f"zip member {info.filename!r} is {info.file_size} bytes; images are limited to "
                               f"{limits.max_image_bytes}")
        if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
            raise DatasetError(f"zip member {info.filename!r} expands {info.file_size // info.compress_size}x: "
                               "refused as a likely zip bomb")
        if not info.filename.lower().endswith(IMAGE_SUFFIXES):
            raise DatasetError(f"zip member {info.filename!r} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        images.append(info)
    if not images:
        raise DatasetError("ImageFolder zip holds no images")
    parts = [i.filename.split("/") for i in images]
    depth = {len(p) for p in parts}
    if depth == {3} and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    elif depth != {2}:
        raise DatasetError("ImageFolder zip must hold <class>/<image> (optionally under one top folder)")
    for info in images:
        try:
            with zf.open(info) as f:
                head = f.read(12)
        except (zlib.error, lzma.LZMAError, EOFError, OSError) as exc:  # OSError: a damaged bzip2 stream
            raise DatasetError(f"zip member {info.filename!r} is corrupt: {exc}") from None
        if not (head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            raise DatasetError(f"zip member {info.filename!r} is not a PNG, JPEG, BMP, GIF or WebP image")
    counts: dict[str, int] = {}
    for p in parts:
        counts[p[0]] = counts.get(p[0], 0) + 1
    if len(images) > limits.max_images:
        raise DatasetError(f"dataset has {len(images)} images; at most {limits.max_images} are accepted")
    return DatasetInfo("imagefolder", len(images), None, sorted(counts), False, dict(sorted(counts.items())))
