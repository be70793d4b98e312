"""A folder of webdataset tar shards read in order into an ImageDataset (convention: repscope.shard_layout).

Shards in sorted name order, members in tar order, each shard streamed front to back (``tarfile`` mode
``r|*``) and its members read as bytes only (never extracted; links, devices, ``..`` or absolute names and
oversized members refused). Images are decoded by the caller's ``decode`` (worker.datasets.readers._decode:
same pixel limit, RGB, bilinear resize to image_size or the first image's size, as for image folders).
Labels: classes.txt's names (a label outside them is refused) or '0'..max label. Split: the shards'
train-/val-/test- name prefixes, else the stratified 80/20 split (seed 0) of the other readers. Errors are
repscope.datasets.DatasetError naming shard and sample key (read_image_folder re-raises them as its own).
Not yet streamed to the model: the images end in one array, as for the other server folders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from repscope import shard_layout as S
from repscope.datasets import DatasetError

from .builtin import ImageDataset, stratified_split

MAX_SAMPLES = 2_000_000

Decode = Callable[[bytes, str, "tuple[int, int] | None", int], np.ndarray]


def read_shards(layout_root: Path, root: Path, *, name: str, decode: Decode,
                image_size: int | tuple[int, int] | None, max_image_pixels: int,
                max_samples: int = MAX_SAMPLES) -> ImageDataset:
    """The samples of every shard under `layout_root` (resolved under `root`), in order."""
    shards = S.list_shards(layout_root, root)
    names = S.read_classes(layout_root, root)
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    images, labels, splits, budget = [], [], [], [S.MAX_MEMBERS]
    for shard in shards:
        for sample in S.iter_samples(shard, budget=budget):
            if names is not None and sample.label >= len(names):
                raise DatasetError(f"{sample.where}: label {sample.label} is out of range for the "
                                   f"{len(names)} classes of {S.CLASSES_FILE}")
            if len(images) >= max_samples:
                raise DatasetError(f"shards hold more than {max_samples} samples")
            img = decode(sample.data, f"{shard.name}:{sample.image}", size, max_image_pixels)
            size = size or img.shape[:2]  # the first image fixes the common size
            images.append(img)
            labels.append(sample.label)
            splits.append(shard.split)
    if not images:
        raise DatasetError("the shards hold no samples (an image and a label per key)")
    label_arr = np.array(labels, dtype=np.int64)
    classes = names or S.label_classes(int(label_arr.max()))
    split = np.array(splits, dtype=np.int8) if shards[0].split is not None else stratified_split(label_arr)
    return ImageDataset(np.stack(images), label_arr, split, classes, name)
