"""CIFAR-10 / CIFAR-100 / STL-10 in their distributed binary formats, read with numpy alone (nothing unpickled).

Record layouts (repscope.dataset_layouts has the file names and sizes, checked before anything is mapped):
- CIFAR-10 binary (https://www.cs.toronto.edu/~kriz/cifar.html): 3 073-byte records, 1 label byte (0..9) then
  1 024 R, 1 024 G, 1 024 B bytes of a 32 x 32 image in row-major order: reshape (3, 32, 32), transpose to HWC.
- CIFAR-100 binary: 3 074-byte records, coarse label (0..19), fine label (0..99), then the 3 072 pixels as
  above; labels are the fine ones, the coarse ones travel as the factor ``coarse_label``.
- STL-10 binary (stl10_input.py, read_all_images): 27 648 bytes per image, 3 x 96 x 96 with each channel
  stored column-major: ``np.reshape(x, (-1, 3, 96, 96)); np.transpose(x, (0, 3, 2, 1))``; labels a separate
  uint8 file holding 1..10 (read as 0..9). unlabeled_X.bin is not read (no labels).
Files are memory-mapped and copied to the output in chunks of CHUNK images (no second whole-file copy).
Split: 0 for the training files, 1 for the test files, as ImageDataset expects. Errors are
repscope.datasets.DatasetError (the layout checks' own); worker.datasets.readers.read_image_folder re-raises
them as its DatasetError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repscope import dataset_layouts as L
from repscope.datasets import DatasetError

from .builtin import ImageDataset

CHUNK = 4096  # images copied from a memory map per step
MAX_IMAGES = 2_000_000


def _labels(raw: np.ndarray, spec: L.BinarySpec, n_classes: int, fname: str, what: str = "label") -> np.ndarray:
    """int64 labels from raw bytes, refused (naming the file) when any lies outside the spec's range."""
    labels = raw.astype(np.int64) - spec.label_base
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{fname!r}: record {i} has {what} {int(raw[i])}; expected {spec.label_base}.."
                           f"{spec.label_base + n_classes - 1}")
    return labels


def _read_part(part: L.BinaryPart, spec: L.BinarySpec, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Fill `out` (n x H x W x C) from one file; (labels, coarse labels or None)."""
    h, w, c = spec.shape
    mm = np.memmap(part.path, dtype=np.uint8, mode="r", shape=(part.n, spec.record))
    try:
        if spec.label_bytes:
            raw = np.array(mm[:, spec.label_bytes - 1])
            coarse = _labels(np.array(mm[:, 0]), spec, spec.coarse[0], part.name, "coarse label") \
                if spec.coarse else None
        else:
            raw, coarse = np.fromfile(part.labels, dtype=np.uint8), None
        labels = _labels(raw, spec, spec.n_classes, part.labels.name if part.labels else part.name)
        for i in range(0, part.n, CHUNK):
            block = mm[i:i + CHUNK, spec.label_bytes:]
            if spec.label_bytes:  # CIFAR: channel planes, each row-major
                out[i:i + CHUNK] = block.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
            else:  # STL-10: channel planes, each column-major (x[c, col, row])
                out[i:i + CHUNK] = block.reshape(-1, c, w, h).transpose(0, 3, 2, 1)
    finally:
        del mm
    return labels, coarse


def read_binary_dataset(layout_root: Path, fmt: str, root: Path, *, name: str,
                        max_images: int = MAX_IMAGES) -> ImageDataset:
    """A CIFAR-10/100 or STL-10 binary folder (`fmt` as repscope.dataset_layouts.detect_layout names it) whose
    files must resolve under `root`; errors name the file."""
    spec = L.BINARY_SPECS[fmt]
    parts = L.binary_parts(spec, layout_root, root)
    classes = L.binary_classes(spec, layout_root, root)
    n = sum(p.n for p in parts)
    if n > max_images:
        raise DatasetError(f"dataset has {n} images; at most {max_images} are accepted")
    images = np.empty((n, *spec.shape), dtype=np.uint8)
    labels, coarse, split = [], [], []
    start = 0
    for part in parts:
        lab, crs = _read_part(part, spec, images[start:start + part.n])
        labels.append(lab)
        coarse.append(crs)
        split.append(np.full(part.n, part.split, dtype=np.int8))
        start += part.n
    factors = {"coarse_label": np.concatenate(coarse)} if spec.coarse else {}
    return ImageDataset(images, np.concatenate(labels), np.concatenate(split), classes, name, factors)
