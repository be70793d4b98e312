"""Read an uploaded .npz of arrays (images, labels, split, classes): ``np.load(allow_pickle=False)`` after the
API's archive checks again (declared sizes, compression ratios, every .npy header against its member's size)."""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import replace

import numpy as np

from repscope.formats import FormatError, ZipLimits, _npz_member, check_npz_directory

from .builtin import ImageDataset, stratified_split
from .errors import DatasetError

MAX_EXPANDED_BYTES = 8 << 30
MAX_NPZ_MEMBERS = 16


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


