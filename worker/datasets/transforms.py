"""Batched preprocessing on the device: uint8 NHWC -> normalised float NCHW, and seeded augmented views.

``to_device`` moves one uint8 batch (4x fewer bytes than float) through pinned memory; ``preprocess``
converts, normalises and resizes it there (bilinear, antialias=True, as torchvision's Resize on tensors);
``views`` draws q random augmentations per image for LiDAR (Thilak et al. 2023, arXiv 2312.04000): random
resized crop + horizontal flip (one affine ``grid_sample`` per view), colour jitter and random grayscale,
following SimCLR's recipe (Chen et al. 2020, appendix A) in plain torch.

View parameters depend only on (seed, image index) — drawn in blocks of PARAM_BLOCK images with
``numpy.random.default_rng([seed, block])`` — so embeddings do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from worker.suites.common import images as common_images
from worker.suites.common.images import LUMA  # Rec. 601, as torchvision rgb_to_grayscale

# ImageNet statistics (torchvision / timm defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SimCLR augmentations (Chen et al. 2020, appendix A), crop scale raised for small images.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
JITTER = (0.4, 0.4, 0.4)  # brightness, contrast, saturation strengths (hue is not implemented)
JITTER_P = 0.8
GRAY_P = 0.2
PARAM_BLOCK = 1024
N_DRAWS = 10


def to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x C numpy (or tensor) -> the same uint8 tensor on the device (pinned, non-blocking)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {t.dtype}")
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_float(batch: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1]; grey (C = 1) is repeated to `channels`."""
    return common_images.to_float(batch, channels)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(x - mean) / std per channel; pass device tensors to avoid a host-to-device copy per batch."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize with antialiasing (matters when shrinking); no-op when the size already matches."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def as_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def preprocess(
    batch: torch.Tensor,
    *,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 NHWC (on the device) -> float NCHW: /255, resize to image_size (None keeps the size), normalise."""
    x = normalize(resize(to_float(batch, len(mean)), as_size(image_size)), mean, std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ---------------------------------------------------------------- augmented views


def view_params(offset: int, n: int, q: int, seed: int) -> np.ndarray:
    """float64 [n, q, N_DRAWS] uniform(0, 1) draws for images offset..offset+n-1, a function of (seed, index)
    only: 5 for the crop (scale, ratio, x, y, flip), 5 for colour (on, brightness, contrast, saturation, grey)."""
    out = np.empty((n, q, N_DRAWS))
    first, last = offset // PARAM_BLOCK, (offset + n - 1) // PARAM_BLOCK
    for block in range(first, last + 1):
        draws = np.random.default_rng([seed, block]).random((PARAM_BLOCK, q, N_DRAWS))
        lo, hi = max(offset, block * PARAM_BLOCK), min(offset + n, (block + 1) * PARAM_BLOCK)
        out[lo - offset : hi - offset] = draws[lo - block * PARAM_BLOCK : hi - block * PARAM_BLOCK]
    return out


def _crop_affine(u: torch.Tensor, aspect: float) -> torch.Tensor:
    """[M, 2, 3] affine_grid matrices for random resized crops + flips from uniform draws u[:, 0:4].

    Area fraction s ~ U(CROP_SCALE), log-ratio r ~ U(log CROP_RATIO); crop width/height fractions
    (sqrt(s r / aspect), sqrt(s / (r / aspect))) clamped to 1 (torchvision falls back to a centre crop
    instead); the centre is uniform over positions that keep the crop inside the image.
    """
    s = CROP_SCALE[0] + u[:, 0] * (CROP_SCALE[1] - CROP_SCALE[0])
    log_r = np.log(CROP_RATIO[0]) + u[:, 1] * (np.log(CROP_RATIO[1]) - np.log(CROP_RATIO[0]))
    r = torch.exp(log_r)
    w = torch.sqrt(s * r / aspect).clamp(max=1.0)
    h = torch.sqrt(s / r * aspect).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    flip = torch.where(u[:, 4] < FLIP_P, -1.0, 1.0).to(u.dtype)
    theta = torch.zeros(u.shape[0], 2, 3, dtype=u.dtype, device=u.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def _jitter(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation (fixed order) with probability JITTER_P, then grayscale with GRAY_P."""
    b, c, s = JITTER
    on = (u[:, 0] < JITTER_P).to(x.dtype).view(-1, 1, 1, 1)
    fb = 1 + (u[:, 1] * 2 - 1) * b
    fc = 1 + (u[:, 2] * 2 - 1) * c
    fs = 1 + (u[:, 3] * 2 - 1) * s
    luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    def gray(t: torch.Tensor) -> torch.Tensor:
        return (t * luma).sum(1, keepdim=True) if t.shape[1] == 3 else t

    y = (x * fb.view(-1, 1, 1, 1)).clamp(0, 1)
    m = gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - m) * fc.view(-1, 1, 1, 1) + m).clamp(0, 1)
    g = gray(y)
    y = ((y - g) * fs.view(-1, 1, 1, 1) + g).clamp(0, 1)
    y = on * y + (1 - on) * x
    to_gray = (u[:, 4] < GRAY_P).to(x.dtype).view(-1, 1, 1, 1)
    return to_gray * gray(y).expand_as(y) + (1 - to_gray) * y


def views(
    images: torch.Tensor,
    q: int,
    seed: int,
    *,
    offset: int = 0,
    size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """q augmented views per image: float [N, C, H, W] in [0, 1] -> [N * q, C, h, w] in [0, 1], view-major
    within each image (rows i*q .. i*q+q-1 are image i). ``offset`` is the global index of images[0]."""
    n, c, h, w = images.shape
    out_h, out_w = as_size(size) or (h, w)
    u = torch.from_numpy(view_params(offset, n, q, seed).reshape(n * q, N_DRAWS)).to(
        images.device, torch.float32
    )
    theta = _crop_affine(u[:, :5], aspect=w / h)
    grid = F.affine_grid(theta, [n * q, c, out_h, out_w], align_corners=False)
    src = images.repeat_interleave(q, dim=0)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _jitter(out, u[:, 5:10]).clamp_(0, 1)
