"""The suite's inputs, checked once: which families, which images (a seeded subsample), which device, the
image split, and the image geometry every view uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worker.suites.common.device import resolve_device
from worker.suites.common.sampling import subsample_rows
from worker.suites.equivariance.families import FAMILIES, FAMILY_NAMES, REFERENCE_SIZE
from worker.suites.equivariance.split import Split, make_split

DEFAULT_N_IMAGES = 1000
MIN_IMAGES = 20
NOISY_BELOW = 200  # fewer images than this: the run warns that its scores are noisy


@dataclass(frozen=True)
class Setup:
    """One run's resolved inputs: `images` is the (subsampled) uint8 N×H×W×C tensor on `device`."""

    families: list[str]
    images: torch.Tensor
    n_total: int  # images given
    rows: np.ndarray | None  # the subsample's rows, None when every image is used
    split: Split
    seed: int
    device: torch.device
    batch_size: int
    n_draws: int
    mlp: bool
    mlp_epochs: int

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def side(self) -> int:
        """The square every view is cropped to: min(H, W)."""
        return min(int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def pixel_scale(self) -> float:
        """Pixel-valued strengths are given at REFERENCE_SIZE px and multiplied by this."""
        return self.side / REFERENCE_SIZE

    def warnings(self) -> list[str]:
        h, w = int(self.images.shape[1]), int(self.images.shape[2])
        out = []
        if h != w:
            out.append(f"images are {h}×{w}: every view is the centred {self.side}×{self.side} square crop")
        if self.n < NOISY_BELOW:
            out.append(f"only {self.n} images ({len(self.split.test)} test): R², accuracies and MRR are noisy")
        return out


def _families(families: Sequence[str] | None) -> list[str]:
    names = list(FAMILY_NAMES if families is None else families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown families {unknown}; available: {list(FAMILY_NAMES)}")
    return names


def _images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    imgs = torch.as_tensor(images)
    if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 N x H x W x C with C in (1, 3), got {imgs.dtype} {tuple(imgs.shape)}")
    if int(imgs.shape[0]) < MIN_IMAGES:
        raise ValueError(f"the equivariance suite needs at least {MIN_IMAGES} images, got {int(imgs.shape[0])}")
    return imgs


def prepare(
    images: np.ndarray | torch.Tensor, *, families: Sequence[str] | None, n_images: int, seed: int,
    device: str | torch.device | None, batch_size: int, n_draws: int, mlp: bool, mlp_epochs: int,
) -> Setup:  # fmt: skip
    """Check the arguments (ValueError) and resolve them: the subsample is the sorted
    default_rng(seed).choice(N, max(n_images, MIN_IMAGES), replace=False) when N > n_images."""
    names = _families(families)
    imgs = _images(images)
    n_total = int(imgs.shape[0])
    if batch_size < 1 or n_draws < 1 or mlp_epochs < 1:
        raise ValueError("batch_size, n_draws and mlp_epochs must be ≥ 1")
    dev = resolve_device(device)
    rows = subsample_rows(n_total, n_images, seed, size=max(n_images, MIN_IMAGES))
    if rows is not None:
        imgs = imgs[torch.from_numpy(rows)]
    return Setup(families=names, images=imgs.to(dev), n_total=n_total, rows=rows,
                 split=make_split(int(imgs.shape[0]), seed), seed=seed, device=dev, batch_size=batch_size,
                 n_draws=n_draws, mlp=mlp, mlp_epochs=mlp_epochs)  # fmt: skip
