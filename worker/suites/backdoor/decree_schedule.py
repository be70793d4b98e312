"""DECREE's schedule and bookkeeping, as the authors' code has them (GiantSeaweed/DECREE main.py; decree.py's
docstring gives the whole protocol and its deviations): the per-dataset profile, the learning-rate schedule, λ's
adaptation rule, the search state with the code's stall counter, the stop rule, and the known-trigger region
used to report where the recovered mask lies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DECREE_COS_THRESHOLD = 0.99  # main.py --thres
DECREE_LR = 0.5  # run_decree.py lr (main.py's argparse default 1e-3 is overridden there)
DECREE_LATE_LRS = (0.1, 0.05)  # main.py adjust_learning_rate, after the first / second milestone
DECREE_LAMBDA_INIT = 1e-3
DECREE_LAMBDA_MAX = 1e5  # λ is only multiplied while below this
DECREE_PATIENCE = 5  # λ changes after more than this many successes / failures in a row
DECREE_LAMBDA_FACTOR = 5.0
DECREE_PROFILE_SIDE = 96  # sides up to this (CIFAR-10 32 px, STL-10 96 px) take the code's CIFAR settings


@dataclass(frozen=True)
class DecreeProfile:
    """The code's per-dataset settings (main.py): lr milestones (epochs), λ's floor, stop patience (steps)."""

    name: str
    milestones: tuple[int, int]
    lambda_min: float
    stop_patience: int


PROFILE_CIFAR = DecreeProfile("cifar10/stl10", (30, 50), 1e-5, 2 * DECREE_PATIENCE)
PROFILE_IMAGENET = DecreeProfile("imagenet/CLIP", (200, 500), 1e-7, 7 * DECREE_PATIENCE)


def profile_for(h: int, w: int) -> DecreeProfile:
    """The code's CIFAR-10/STL-10 settings up to DECREE_PROFILE_SIDE pixels a side, else ImageNet/CLIP's."""
    return PROFILE_CIFAR if max(h, w) <= DECREE_PROFILE_SIDE else PROFILE_IMAGENET


def decree_lr(epoch: int, profile: DecreeProfile = PROFILE_CIFAR, lr: float = DECREE_LR) -> float:
    """main.py adjust_learning_rate: `lr` before the first milestone, then 0.1, from the second 0.05."""
    first, second = profile.milestones
    return lr if epoch < first else DECREE_LATE_LRS[0] if epoch < second else DECREE_LATE_LRS[1]


def should_stop(epoch: int, epoch_cos: float, stall: int, profile: DecreeProfile = PROFILE_CIFAR,
                threshold: float = DECREE_COS_THRESHOLD) -> bool:  # fmt: skip
    """The stop rule checked after epoch `epoch` (0-based): the code's (epoch-mean cosine > threshold and the
    best mask unchanged for more than the profile's patience in steps), never before the last lr milestone."""
    return epoch + 1 >= profile.milestones[-1] and epoch_cos > threshold and stall > profile.stop_patience


@dataclass
class LambdaRule:
    """The weight λ of ‖m‖₁ and its counters (main.py): ×5 after more than 5 successes in a row, ÷5 after
    more than 5 failures, back to λ₀ after more than 2·5 successes while below λ_min."""

    lambda_min: float
    value: float = DECREE_LAMBDA_INIT
    ups: int = 0
    downs: int = 0
    resets: int = 0

    def update(self, success: bool) -> None:
        if self.value < self.lambda_min and success:
            self.resets += 1
            if self.resets > 2 * DECREE_PATIENCE:
                self.value, self.ups, self.downs = DECREE_LAMBDA_INIT, 0, 0
        else:
            self.resets = 0
        self.ups, self.downs = (self.ups + 1, 0) if success else (0, self.downs + 1)
        if self.ups > DECREE_PATIENCE:
            if self.value < DECREE_LAMBDA_MAX:
                self.value *= DECREE_LAMBDA_FACTOR
            self.ups = 0
        elif self.downs > DECREE_PATIENCE:
            if self.value >= self.lambda_min:
                self.value /= DECREE_LAMBDA_FACTOR
            self.downs = 0


@dataclass
class SearchState:
    """The smallest successful (‖m‖₁, mask, pattern, batch cosine) so far, the first successful step, and the
    code's stall counter: steps since a valid mask exists without a smaller one."""

    best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
    first_success: int | None = None
    stall_best: float = math.inf
    stall: int = 0

    def record(self, step: int, ok: bool, l1: float, cos: float, m: torch.Tensor, p: torch.Tensor) -> None:
        if ok and (self.best is None or l1 < self.best[0]):
            self.best = (l1, m.detach().clone(), p.detach().clone(), cos)
        if ok and self.first_success is None:
            self.first_success = step
        if self.best is not None:
            self.stall = self.stall + 1 if self.best[0] >= self.stall_best else 0
            self.stall_best = min(self.stall_best, self.best[0])


def region_mask(region: np.ndarray | Sequence[int], h: int, w: int) -> np.ndarray:
    """A boolean H×W mask from a boolean array or a box (r0, r1, c0, c1), rows r0..r1−1, columns c0..c1−1."""
    arr = np.asarray(region)
    if arr.dtype == bool:
        if arr.shape != (h, w):
            raise ValueError(f"trigger region mask has shape {arr.shape}, images are {h}×{w}")
        return arr
    if arr.shape != (4,):
        raise ValueError("trigger region must be a boolean H×W mask or a box (r0, r1, c0, c1)")
    r0, r1, c0, c1 = (int(v) for v in arr)
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise ValueError(f"trigger box {(r0, r1, c0, c1)} is empty or outside the {h}×{w} image")
    out = np.zeros((h, w), bool)
    out[r0:r1, c0:c1] = True
    return out


def mask_share(mask: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(Σ_region m / Σ m, |region| / (H·W)): the mask's mass inside the region and a uniform mask's."""
    total = float(mask.sum())
    inside = float(mask[region].sum()) / total if total > 0 else math.nan
    return inside, float(region.mean())
