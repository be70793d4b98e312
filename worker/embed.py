"""Embed an image dataset with an encoder: uint8 images in, float32 N x D (or N x q x D views) out.

One batch at a time travels to the device as uint8 (pinned, non-blocking), is converted there and preprocessed
as the model expects (worker.datasets.preprocessing: resize, centre crop, normalise, from the model's timm /
Hugging Face config when the loader found one, else the images' own size and ImageNet statistics) and goes
through the encoder under ``torch.inference_mode`` as a channels_last batch: the layout uint8 N x H x W x C
already has, on which oneDNN ran timm's ResNet-50 25-50 % faster than on NCHW input (2 CPU cores, fp32), and
the fast path for convnets on tensor cores (on CUDA: bf16 autocast, channels_last weights). The result of batch
i is copied back while batch i + 1 is queued, so the GPU does not wait for the host. Memory is bounded by one
batch on the device plus the N x D output on the host. LiDAR views are augmented from the whole image straight
to the network's input size (the crop).

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
from worker.datasets.preprocessing import Preprocessing, apply, stats
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


def resolve_preprocessing(
    module: nn.Module | LoadedEncoder | None = None,
    preprocessing: Preprocessing | None = None,
    *,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The Preprocessing embed() applies: ``preprocessing``, else a LoadedEncoder's ``.preprocessing``, else the
    images' own size with ImageNet statistics (a LoadedEncoder's ``input_size`` as an exact resize); then the
    keyword overrides.

    image_size -- the network input (int or (H, W)): with a preprocessing that centre-crops, the new crop
                  (Preprocessing.with_overrides rescales the resize); without one, an exact resize (as before).
    mean, std  -- replace the statistics.
    """
    if preprocessing is None and isinstance(module, LoadedEncoder):
        preprocessing = getattr(module, "preprocessing", None)
        if preprocessing is None and image_size is None:
            image_size = module.input_size
    prep = preprocessing or Preprocessing()
    if image_size is not None:
        size = T.as_size(image_size)
        prep = prep.with_overrides(crop=size) if prep.crop is not None else prep.with_overrides(resize=size)
    return prep.with_overrides(mean=mean, std=std)


def embed(
    module: nn.Module | LoadedEncoder,
    images: np.ndarray,
    *,
    preprocessing: Preprocessing | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    amp: bool = True,
    views: int = 0,
    seed: int = 0,
    pool: str | None = None,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Embeddings of uint8 N x H x W x C images: float32 [N, D], or [N, views, D] when views > 0.

    preprocessing -- resize / crop / normalisation; default a LoadedEncoder's ``.preprocessing``, else the
                     images' own size and ImageNet statistics. image_size, mean, std override it
                     (``resolve_preprocessing``).
    views         -- q > 0: q seeded augmented views per image (transforms.views) at the network's input size
                     instead of the image itself; batch_size then counts views (batch_size // q images per batch).
    pool          -- how token outputs are reduced (features.encode); default the LoadedEncoder's, else "cls".
    amp           -- bf16 autocast on CUDA (ignored on the CPU, which always runs fp32).
    The module is moved to the device and put in eval mode.
    """
    prep = resolve_preprocessing(module, preprocessing, image_size=image_size, mean=mean, std=std)
    if isinstance(module, LoadedEncoder):
        pool = pool or module.pool
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
    mean_std = stats(prep, dev)  # once, not per batch
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
            x = T.to_float(T.to_device(np.ascontiguousarray(images[start:stop]), dev), len(prep.mean))
            if views:
                v = T.views(x, views, seed, offset=start, size=prep.output_size(x.shape[-2:]))
                x = T.normalize(v, *mean_std).contiguous(memory_format=torch.channels_last)
            else:
                x = apply(x, prep, mean_std=mean_std, channels_last=True)
            with autocast:
                z = encode(module, x, pool=pool)
            if pending is not None:  # copy batch i - 1 back while batch i runs
                flush(*pending)
            pending = (start, stop, z)
            progress((i + 1) / n_batches, f"embedded {stop}/{n} images")
        flush(*pending)
    assert out is not None
    return out


def _augment_spec(seed: int) -> dict[str, Any]:
    return {"seed": int(seed),
            "augment": {"crop_scale": list(T.CROP_SCALE), "crop_ratio": [round(r, 6) for r in T.CROP_RATIO],
                        "flip_p": T.FLIP_P, "jitter": list(T.JITTER), "jitter_p": T.JITTER_P,
                        "gray_p": T.GRAY_P}}  # fmt: skip


def preprocessing_spec(
    *,
    preprocessing: Preprocessing | None = None,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    views: int = 0,
    seed: int = 0,
    precision: str = "fp32",
    pool: str = "cls",
    output: str = "backbone",
) -> dict[str, Any]:
    """Everything besides checkpoint and dataset bytes that changes the embeddings, as plain JSON.

    With ``preprocessing`` (image_size / mean / std then override it, as in embed()), the spec records its
    to_json() under "preprocessing"; without it, the earlier form (image_size, bilinear resize, mean, std), whose
    keys stay as they were.
    """
    spec: dict[str, Any] = {"version": PREPROCESSING_VERSION}
    if preprocessing is not None:
        prep = resolve_preprocessing(None, preprocessing, image_size=image_size, mean=mean, std=std)
        spec["preprocessing"] = prep.to_json()
    else:
        spec.update({
            "image_size": list(T.as_size(image_size)) if image_size is not None else None,
            "resize": "bilinear-antialias",
            "mean": [round(float(m), 6) for m in (T.IMAGENET_MEAN if mean is None else mean)],
            "std": [round(float(s), 6) for s in (T.IMAGENET_STD if std is None else std)],
        })  # fmt: skip
    spec.update({"precision": precision, "pool": pool, "output": output, "views": int(views)})
    if views:
        spec.update(_augment_spec(seed))
    return spec


def preprocessing_key(**kw) -> str:
    """Short stable id of ``preprocessing_spec(**kw)`` (repscope.cache.preprocessing_key)."""
    return cache.preprocessing_key(preprocessing_spec(**kw))
