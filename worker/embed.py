"""Embed an image dataset with an encoder: uint8 images in, float32 N x D (or N x q x D views) out.

One batch at a time travels to the device as uint8 (pinned, non-blocking), is converted / resized /
normalised there (worker.datasets.transforms) and goes through the encoder under ``torch.inference_mode``;
on CUDA with bf16 autocast and channels_last (the usual fast path for convnets on tensor cores). The
result of batch i is copied back while batch i + 1 is queued, so the GPU does not wait for the host.
Memory is bounded by one batch on the device plus the N x D output on the host.

``preprocessing_spec`` names everything besides the checkpoint and the dataset that changes the numbers; the embed
step reports it, and repscope.cache holds the derived-embeddings cache keys and their version (DESIGN.md, data
flow step 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from repscope import cache
from repscope.cache import PREPROCESSING_VERSION
from worker.datasets import transforms as T
from worker.models.features import encode
from worker.models.loading import LoadedEncoder
from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.device import resolve_device

DEFAULT_BATCH_SIZE = 256
AMP_DTYPE = torch.bfloat16


def embed_precision(device: str | torch.device | None, amp: bool = True) -> str:
    """The precision embed() runs at: bf16-autocast on CUDA with amp, else fp32 (never autocast on the CPU)."""
    return "bf16-autocast" if amp and resolve_device(device).type == "cuda" else "fp32"


def _prepare(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device)
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # TorchScript / exported modules may not take memory_format
            module = module.to(memory_format=torch.channels_last)
    with contextlib.suppress(NotImplementedError):  # exported GraphModules refuse .eval(): baked in at export
        module.eval()
    return module


def embed(
    module: nn.Module | LoadedEncoder,
    images: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = T.IMAGENET_MEAN,
    std: Sequence[float] = T.IMAGENET_STD,
    device: str | torch.device | None = None,
    amp: bool = True,
    views: int = 0,
    seed: int = 0,
    pool: str | None = None,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Embeddings of uint8 N x H x W x C images: float32 [N, D], or [N, views, D] when views > 0.

    image_size -- resize to this (int or (H, W)); None keeps the images' size, or uses a LoadedEncoder's
                  ``input_size``.
    views      -- q > 0: q seeded augmented views per image (transforms.views) instead of the image itself;
                  batch_size then counts views (batch_size // q images per batch).
    pool       -- how token outputs are reduced (features.encode); default the LoadedEncoder's, else "cls".
    amp        -- bf16 autocast on CUDA (ignored on the CPU, which always runs fp32).
    The module is moved to the device and put in eval mode.
    """
    if isinstance(module, LoadedEncoder):
        pool = pool or module.pool
        image_size = image_size if image_size is not None else module.input_size
        module = module.module
    pool = pool or "cls"
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
    n = len(images)
    if n == 0:
        raise ValueError("no images to embed")
    if batch_size < 1 or views < 0:
        raise ValueError("batch_size must be >= 1 and views >= 0")
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    module = _prepare(module, dev)
    per_batch = max(1, batch_size // views) if views else batch_size
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev)  # once, not per batch
    std_t = torch.tensor(std, dtype=torch.float32, device=dev)
    autocast = torch.autocast("cuda", dtype=AMP_DTYPE) if cuda and amp else contextlib.nullcontext()
    out: np.ndarray | None = None
    pending: tuple[int, int, torch.Tensor] | None = None

    def flush(start: int, stop: int, z: torch.Tensor) -> None:
        nonlocal out
        z = z.float().cpu().numpy()
        if views:
            z = z.reshape(stop - start, views, -1)
        if out is None:
            out = np.empty((n, *z.shape[1:]), dtype=np.float32)
        out[start:stop] = z

    n_batches = -(-n // per_batch)
    with torch.inference_mode():
        for i, start in enumerate(range(0, n, per_batch)):
            stop = min(n, start + per_batch)
            x = T.to_device(np.ascontiguousarray(images[start:stop]), dev)
            if views:
                v = T.views(T.to_float(x, len(mean)), views, seed, offset=start, size=image_size)
                x = T.normalize(v, mean_t, std_t).contiguous(
                    memory_format=torch.channels_last if cuda else torch.contiguous_format
                )
            else:
                x = T.preprocess(x, image_size=image_size, mean=mean_t, std=std_t, channels_last=cuda)
            with autocast:
                z = encode(module, x, pool=pool)
            if pending is not None:  # copy batch i - 1 back while batch i runs
                flush(*pending)
            pending = (start, stop, z)
            progress((i + 1) / n_batches, f"embedded {stop}/{n} images")
        flush(*pending)
    assert out is not None
    return out


def preprocessing_spec(
    *,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = T.IMAGENET_MEAN,
    std: Sequence[float] = T.IMAGENET_STD,
    views: int = 0,
    seed: int = 0,
    precision: str = "fp32",
    pool: str = "cls",
    output: str = "backbone",
) -> dict[str, Any]:
    """Everything besides checkpoint and dataset bytes that changes the embeddings, as plain JSON."""
    spec: dict[str, Any] = {
        "version": PREPROCESSING_VERSION,
        "image_size": list(T.as_size(image_size)) if image_size is not None else None,
        "resize": "bilinear-antialias",
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "precision": precision,
        "pool": pool,
        "output": output,
        "views": int(views),
    }
    if views:
        spec["seed"] = int(seed)
        spec["augment"] = {"crop_scale": list(T.CROP_SCALE), "crop_ratio": [round(r, 6) for r in T.CROP_RATIO],
                           "flip_p": T.FLIP_P, "jitter": list(T.JITTER), "jitter_p": T.JITTER_P,
                           "gray_p": T.GRAY_P}  # fmt: skip
    return spec


def preprocessing_key(**kw) -> str:
    """Short stable id of ``preprocessing_spec(**kw)`` (repscope.cache.preprocessing_key)."""
    return cache.preprocessing_key(preprocessing_spec(**kw))
