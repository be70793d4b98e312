"""Embed a folder of image files streamed through a torch DataLoader: bounded memory at any dataset size.

Worker processes (``workers``; 0 = in this process) open, decode and transform one image each — the model's eval
transform on the PIL image (worker.datasets.eval_transform: Resize(shorter side) + CenterCrop + Normalize, as
torchvision users write it) — and batches go through the encoder under ``torch.inference_mode`` (bf16 autocast
and pinned memory on CUDA). Embeddings are written into a memory-mapped ``.npy`` as batches finish, so memory
is one batch per loader worker plus the model, never the dataset; progress is reported per batch. Resumable:
with the outputs in a directory that outlives the process (worker.sandbox's FolderSource.resume_dir), a rerun
after the worker was killed continues from the last flushed batch (``start``).
An image that cannot be read or decoded (truncated, not an image, over MAX_IMAGE_PIXELS) gets a zero row and is
counted; when more than ``max_unreadable`` of them (a fraction) turn up, the step fails naming the first ones.
Runs inside the sandbox (worker.sandbox.child): the folder is bound read-only there, decoding untrusted files
included.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.datasets import transforms as T
from worker.datasets.eval_transform import pil_transform
from worker.datasets.folders import SHARD_SEP, display_name, item_bytes
from worker.datasets.preprocessing import Preprocessing, stats
from worker.datasets.readers import MAX_IMAGE_PIXELS  # refused before decoding, as for in-memory datasets
from worker.models.features import encode
from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.device import resolve_device

# A folder of images of many sizes needs one input size; encoders with none of their own (TorchScript, export)
# get the usual ImageNet evaluation: shorter side 256, centre crop 224.
FOLDER_DEFAULT = {"resize": 256, "crop": 224}
NAMED = 20  # unreadable files named in the failure


class UnreadableImages(ValueError):
    """More images than allowed could not be read; the message names them."""


@dataclass
class StreamResult:
    rows: int
    dim: int
    unreadable: list[int] = field(default_factory=list)  # row indices given zero features
    reasons: dict[int, str] = field(default_factory=dict)


class ImageFiles(torch.utils.data.Dataset):
    """(transformed image, index, ok) for each relative path under ``root``."""

    def __init__(self, root: str, paths: Sequence[str], prep: Preprocessing, max_pixels: int = MAX_IMAGE_PIXELS):
        self.root, self.paths, self.prep, self.max_pixels = root, list(paths), prep, max_pixels
        self.transform = pil_transform(prep)
        self.blank = torch.zeros(3, *prep.crop)

    def __len__(self) -> int:
        return len(self.paths)

    def _open(self, path: str) -> str | io.BytesIO:
        """A file, or an image member of an uncompressed webdataset shard ("<shard>::<offset>::<size>")."""
        if SHARD_SEP not in path:
            return os.path.join(self.root, path)
        return io.BytesIO(item_bytes(Path(self.root), path))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        from PIL import Image

        try:
            with Image.open(self._open(self.paths[i])) as img:
                if img.width * img.height > self.max_pixels:
                    raise ValueError(f"{img.width} x {img.height} pixels is over the limit")
                img.load()
                return self.transform(img), i, ""
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return self.blank, i, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def folder_preprocessing(prep: Preprocessing) -> Preprocessing:
    """The encoder's preprocessing, with a fixed input size when it has none (FOLDER_DEFAULT)."""
    if prep.crop is not None:
        return prep
    if isinstance(prep.resize, tuple):
        return prep.with_overrides(crop=prep.resize)
    return prep.with_overrides(**FOLDER_DEFAULT)


def _reopen(path: Path | None, n: int) -> np.ndarray | None:
    """A partly written output of an earlier, interrupted run (resume), if it is there with N rows."""
    if path is None or not path.is_file():
        return None
    arr = np.load(path, mmap_mode="r+")
    return arr if arr.dtype == np.float32 and len(arr) == n else None


def embed_files(module: nn.Module, root: str, paths: Sequence[str], prep: Preprocessing, out: Path, *,
                pool: str = "cls", batch_size: int = 256, workers: int = 0, device: str | None = None,
                views: int = 0, seed: int = 0, views_out: Path | None = None, max_unreadable: float = 0.01,
                start: int = 0, unreadable: Sequence[int] = (), on_batch: Callable[[int, list[int]], None] | None = None,
                progress: ProgressFn = no_progress) -> StreamResult:
    """Write features [N, D] of the images at ``root/paths`` to ``out`` (a .npy), in order (module docstring);
    with ``views`` > 0 also q augmented views per image [N, q, D] to ``views_out`` (LiDAR).
    Resume: ``start`` rows (and their ``unreadable`` indices) are already in ``out`` from an interrupted run;
    ``on_batch(rows_done, unreadable)`` is called after every batch, once its rows are flushed to the files."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    images = ImageFiles(root, paths, prep)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(images, range(start, len(paths))), batch_size=batch_size, num_workers=workers,
        pin_memory=cuda, persistent_workers=False, prefetch_factor=2 if workers else None)
    module = module.to(dev).eval()
    mean, std = stats(prep, dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    result = StreamResult(len(paths), 0, list(unreadable))
    feats = _reopen(out, len(paths)) if start else None
    view_feats = _reopen(views_out, len(paths)) if start and views else None
    if start and (feats is None or (views and view_feats is None)):
        raise ValueError("cannot resume: the earlier run's output files are missing or of another shape")
    result.dim = int(feats.shape[1]) if feats is not None else 0
    n_batches = max(1, -(-(len(paths) - start) // batch_size))
    with torch.inference_mode():
        for b, (x, idx, errors) in enumerate(loader):
            x = x.to(dev, non_blocking=True)
            with autocast:
                z = encode(module, x, pool=pool).float()
            failed = [j for j, err in enumerate(errors) if err]
            if failed:
                z[failed] = 0.0
            if feats is None:
                result.dim = int(z.shape[1])
                feats = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(paths), result.dim))
            feats[int(idx[0]):int(idx[-1]) + 1] = z.cpu().numpy()
            if views:
                v = _views(module, x, mean, std, views, seed, int(idx[0]), pool, autocast)
                v[failed] = 0.0
                if view_feats is None:
                    view_feats = np.lib.format.open_memmap(views_out, mode="w+", dtype=np.float32,
                                                           shape=(len(paths), views, v.shape[-1]))
                view_feats[int(idx[0]):int(idx[-1]) + 1] = v
            for i, err in zip(idx.tolist(), errors, strict=True):
                if err:
                    result.unreadable.append(i)
                    result.reasons[i] = err
            if on_batch is not None:
                for arr in (feats, view_feats):
                    if arr is not None:
                        arr.flush()
                on_batch(int(idx[-1]) + 1, result.unreadable)
            progress((b + 1) / n_batches, f"embedded {int(idx[-1]) + 1}/{len(paths)} images"
                     + (f" ({len(result.unreadable)} unreadable)" if result.unreadable else ""))
    _check_unreadable(result, paths, max_unreadable)
    for arr in (feats, view_feats):
        if arr is not None:
            arr.flush()
    return result


def _views(module, x, mean, std, q, seed, offset, pool, autocast) -> np.ndarray:  # noqa: ANN001
    """q seeded augmented views (worker.datasets.transforms.views) of the already transformed batch."""
    x01 = (x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)
    v = T.normalize(T.views(x01, q, seed, offset=offset, size=None), mean, std)
    with autocast:
        z = encode(module, v, pool=pool).float()
    return z.reshape(x.shape[0], q, -1).cpu().numpy()


def _check_unreadable(result: StreamResult, paths: Sequence[str], max_fraction: float) -> None:
    bad = result.unreadable
    if bad and len(bad) > max_fraction * len(paths):
        named = "; ".join(f"{display_name(paths[i])} ({result.reasons.get(i, 'unreadable')})" for i in bad[:NAMED])
        raise UnreadableImages(f"{len(bad)} of {len(paths)} images could not be read (more than "
                               f"{max_fraction:.1%} allowed): {named}{' ...' if len(bad) > NAMED else ''}")
