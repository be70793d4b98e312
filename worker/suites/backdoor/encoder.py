"""The encoder scan: is an encoder backdoored? Known-trigger collapse (collapse.py), k-NN attack success when
labels exist, DECREE trigger inversion (decree.py) and the verdict `backdoor_risk` (risk.py), over unlabeled
clean images (docs/METRICS.md, "Backdoor suite", encoder-level scores)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worker.suites.base import EncodeFn, ProgressFn, SuiteResult, no_progress
from worker.suites.common.device import resolve_device
from worker.suites.common.sampling import subsample_rows
from worker.suites.common.topk import KNN_TEMPERATURE

from . import triggers as trig
from .collapse import KNN_BANK_FRACTION, TriggerScore, known_trigger_scores
from .decree import (
    DECREE_BATCH,
    DECREE_BETAS,
    DECREE_CALIBRATION,
    DECREE_COS_THRESHOLD,
    DECREE_EPOCHS,
    DECREE_LAMBDA_FACTOR,
    DECREE_LAMBDA_INIT,
    DECREE_LAMBDA_MAX,
    DECREE_LATE_LRS,
    DECREE_LR,
    DECREE_MASK_CHANNELS,
    DECREE_PATIENCE,
    DECREE_PL1_THRESHOLD,
    DECREE_SECONDS,
    DecreeResult,
    decree,
    profile_for,
)
from .figures import decree_figure, trigger_table
from .knn import KNN_K
from .risk import backdoor_risk

MAX_SCAN_IMAGES = 1000  # clean images used by the encoder scan (a seeded subsample when more are given)
DEFAULT_TRIGGERS = tuple(trig.TRIGGERS)  # badencoder, ssl_patch, ctrl, grid, blend
# With decree_center=False (the code's raw cosines), clean images whose raw mean pairwise cosine is above this put
# the 0.99 target within reach of an offset shift: a warning says so.
DECREE_RAW_COS_WARN = 0.5
KNOWN_SHARE = 0.4  # share of the progress bar for the known triggers when DECREE runs after them


def scan_encoder(
    encode: EncodeFn,
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    triggers: Sequence[str] | None = None,
    decree_epochs: int = DECREE_EPOCHS,
    decree_steps: int | None = None,
    decree_seconds: float = DECREE_SECONDS,
    decree_threshold: float = DECREE_PL1_THRESHOLD,
    decree_center: bool = True,
    decree_batch: int = DECREE_BATCH,
    decree_trigger_region: np.ndarray | Sequence[int] | None = None,
    max_images: int = MAX_SCAN_IMAGES,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Encoder-level backdoor scan (METRICS.md, "Backdoor suite", encoder-level scores).

    encode: float NCHW in [0, 1] on `device` → features (N×D, or anything reshaped to N rows); it must be
    differentiable for DECREE (decree_steps=0 skips DECREE). images: uint8 N×H×W×C clean images (at most
    `max_images` are used, a seeded subsample); labels (optional, one per image) enable the k-NN attack
    success. triggers: names from worker.suites.backdoor.triggers.TRIGGERS (default: all five). DECREE (decree.py)
    runs for at most decree_epochs passes over the images, decree_steps steps (None: no step limit; 0 skips
    DECREE) and decree_seconds seconds, decree_batch images a step; its stop rule usually ends it sooner, never
    before its learning-rate schedule has ended. decree_threshold is the PL1 decision threshold;
    decree_center=True (default) centres the features with the clean mean before the cosine, False uses the
    code's raw cosines. decree_trigger_region (a boolean H×W mask or a box (r0, r1, c0, c1), half-open): a
    known trigger region, to report how much of DECREE's mask falls inside it.

    Metrics (T = each trigger):
      collapse_clean, collapse_raw_clean   centred / raw mean pairwise cosine of the clean embeddings
      collapse_{T}, collapse_{T}_control   centred collapse of T and of its control stamp (higher = suspicious)
      collapse_{T}_excess                  their difference: trigger-specific collapse
      collapse_max, collapse_excess_max    max over the triggers
      knn_asr_{T}, knn_asr_{T}_control, knn_asr_max   k-NN attack success (with labels)
      decree_pl1                           PL1 of DECREE's smallest successful mask (lower = suspicious)
      decree_success, decree_cos, decree_steps, decree_seconds
      decree_mask_in_region, decree_region_share   (with decree_trigger_region) share of the mask's mass
                                           inside the region, and the region's share of the image
      backdoor_risk                        ``backdoor_risk``; its inputs in figures["verdict"]
    """
    dev = resolve_device(device)
    images, labels = _checked(images, labels)
    warnings: list[str] = []
    names = _trigger_names(triggers, images.shape[-1], warnings)
    n_total = len(images)
    rows = subsample_rows(n_total, max_images, seed)
    if rows is not None:
        images = images[rows]
        labels = None if labels is None else labels[rows]
    run_decree = (decree_steps is None or decree_steps > 0) and decree_epochs > 0 and decree_seconds > 0
    split = KNOWN_SHARE if run_decree else 1.0

    scores, info = known_trigger_scores(encode, images, names, labels=labels, seed=seed, device=dev,
                                        progress=lambda f, msg: progress(split * f, msg))  # fmt: skip
    metrics = _collapse_metrics(scores, info)
    figures: dict[str, Any] = {"triggers": trigger_table(scores)}
    pl1 = None
    if run_decree:
        pl1 = _decree_scan(encode, images, info, metrics, figures, warnings, epochs=decree_epochs,
                           steps=decree_steps, seconds=decree_seconds, threshold=decree_threshold,
                           center=decree_center, batch=decree_batch, region=decree_trigger_region, seed=seed,
                           device=dev, progress=lambda f, msg: progress(split + (1 - split) * f, msg))  # fmt: skip
    risk, verdict = backdoor_risk({s.name: s.excess for s in scores}, pl1, decree_threshold)
    metrics["backdoor_risk"] = risk
    figures["verdict"] = verdict
    variant = _variant(dev, images, n_total, rows is not None, seed, info["dim"], names, labels is not None)
    variant["decree"] = None if not run_decree else _decree_variant(
        decree_center, decree_batch, images.shape, decree_epochs, decree_steps, decree_seconds, decree_threshold,
        decree_trigger_region is not None)  # fmt: skip
    variant["backdoor_risk"] = verdict["rule"]
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _checked(images: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The images as a uint8 N×H×W×C array (N ≥ 2, C in (1, 3)) and the labels flattened, one per image."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 N×H×W×C with C in (1, 3), got {images.dtype} {images.shape}")
    if len(images) < 2:
        raise ValueError("the encoder scan needs at least 2 images")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
    return images, labels


def _trigger_names(triggers: Sequence[str] | None, channels: int, warnings: list[str]) -> list[str]:
    """The triggers to scan (unknown names refused); RGB-only ones dropped, with a warning, on grey images."""
    names = list(DEFAULT_TRIGGERS if triggers is None else triggers)
    for name in names:
        trig.get_trigger(name)
    if channels == 1:
        skipped = [nm for nm in names if trig.TRIGGERS[nm].needs_rgb]
        if skipped:
            warnings.append(f"trigger(s) {', '.join(skipped)} need RGB images and were skipped (C = 1)")
            names = [nm for nm in names if nm not in skipped]
    return names


def _collapse_metrics(scores: list[TriggerScore], info: dict[str, Any]) -> dict[str, float]:
    """The collapse and k-NN attack-success metrics of the known triggers (scan_encoder's docstring)."""
    metrics: dict[str, float] = {"collapse_clean": info["collapse_clean"],
                                 "collapse_raw_clean": info["collapse_raw_clean"]}  # fmt: skip
    for s in scores:
        metrics[f"collapse_{s.name}"] = s.collapse
        metrics[f"collapse_{s.name}_control"] = s.control
        metrics[f"collapse_{s.name}_excess"] = s.excess
        if s.asr is not None and not math.isnan(s.asr):
            metrics[f"knn_asr_{s.name}"] = s.asr
            metrics[f"knn_asr_{s.name}_control"] = s.asr_control
    if scores:
        metrics["collapse_max"] = max(s.collapse for s in scores)
        metrics["collapse_excess_max"] = max(s.excess for s in scores)
    asrs = [s.asr for s in scores if s.asr is not None and not math.isnan(s.asr)]
    if asrs:
        metrics["knn_asr_max"] = max(asrs)
    return metrics


def _decree_scan(encode: EncodeFn, images: np.ndarray, info: dict[str, Any], metrics: dict[str, float],
                 figures: dict[str, Any], warnings: list[str], *, epochs: int, steps: int | None, seconds: float,
                 threshold: float, center: bool, batch: int, region: np.ndarray | Sequence[int] | None, seed: int,
                 device: torch.device, progress: ProgressFn) -> float | None:  # fmt: skip
    """Run DECREE and add its metrics, figure and warnings; returns PL1, or None when DECREE could not run."""
    if not center and info["collapse_raw_clean"] > DECREE_RAW_COS_WARN:
        warnings.append(f"clean images alone have a raw mean pairwise cosine of {info['collapse_raw_clean']:.3f}: "
                        f"with raw cosines DECREE's {DECREE_COS_THRESHOLD} target can be reached by shifting that "
                        "shared offset, so small masks may succeed on a clean encoder too; decree_center=True "
                        "(the default) removes it")  # fmt: skip
    try:
        dr = decree(encode, images, epochs=epochs, steps=steps, seconds=seconds, batch=batch,
                    similarity="centred" if center else "raw", center=info["mean"] if center else None,
                    trigger_region=region, seed=seed, device=device, progress=progress)  # fmt: skip
    except RuntimeError as err:
        warnings.append(f"DECREE skipped: {err}")
        return None
    metrics.update({"decree_pl1": dr.pl1, "decree_success": float(dr.success), "decree_cos": dr.cos_all,
                    "decree_steps": float(dr.steps), "decree_seconds": dr.seconds})  # fmt: skip
    if dr.mask_in_region is not None:
        metrics["decree_mask_in_region"] = dr.mask_in_region
        metrics["decree_region_share"] = dr.region_share
    figures["decree"] = decree_figure(dr, images.shape[1:3], threshold)
    _decree_warnings(dr, warnings)
    return dr.pl1


def _decree_warnings(dr: DecreeResult, warnings: list[str]) -> None:
    """Say when DECREE found nothing, or stopped on its budget before its learning-rate schedule ended."""
    if not dr.success:
        warnings.append(f"DECREE found no mask reaching mean cosine {DECREE_COS_THRESHOLD} within "
                        f"{dr.steps} steps / {dr.seconds:.0f} s; PL1 reported as 1.0 (the full mask)")  # fmt: skip
    if not dr.schedule_done:
        warnings.append(f"DECREE stopped on its {dr.stopped} budget after {dr.epochs} epochs ({dr.steps} steps), "
                        "before its learning-rate schedule ended: its mask may not have shrunk fully, PL1 is an "
                        "upper bound (raise decree_seconds / decree_steps)")  # fmt: skip


def _variant(dev: torch.device, images: np.ndarray, n_total: int, subsampled: bool, seed: int, dim: int,
             names: list[str], with_labels: bool) -> dict[str, Any]:  # fmt: skip
    """What the encoder scan ran (DECREE and the verdict's rule are added by scan_encoder)."""
    return {
        "device": str(dev),
        "n_images_total": n_total,
        "n_images_used": len(images),
        "subsampled": subsampled,
        "seed": seed,
        "image_size": [int(images.shape[1]), int(images.shape[2]), int(images.shape[3])],
        "dim": dim,
        "triggers": names,
        "controls": {nm: trig.TRIGGERS[nm].control_name for nm in names},
        "collapse": "mean pairwise cosine of f(T(x)) − mean_x f(x) (centred with the clean mean); "
        "excess = trigger − control stamp of equal energy",
        "knn_asr": None if not with_labels else
        f"weighted k-NN (k = {KNN_K}, T = {KNN_TEMPERATURE}), bank = {KNN_BANK_FRACTION:.0%} of the images "
        "(seeded), queries = the rest; target = most common prediction on the stamped queries",
    }  # fmt: skip


def _decree_variant(center: bool, batch: int, shape: tuple[int, ...], epochs: int, steps: int | None,
                    seconds: float, threshold: float, with_region: bool) -> dict[str, Any]:  # fmt: skip
    """How DECREE ran, for the result's variant."""
    n, h, w = shape[:3]
    prof = profile_for(h, w)
    return {
        "source": "Feng et al., CVPR 2023; GiantSeaweed/DECREE main.py (deviations: decree.py's docstring)",
        "cosine": "mean pairwise cosine of features centred with the clean mean (decree_center=True)" if center
        else "raw (uncentred) mean pairwise cosine, as Feng et al.'s code",
        "success": f"batch mean pairwise cosine > {DECREE_COS_THRESHOLD}",
        "mask": f"H×W mask repeated over the channels; ‖m‖₁ summed over {DECREE_MASK_CHANNELS} channels",
        "optimizer": f"Adam, betas {DECREE_BETAS}, batch {min(batch, n)} of {n} images; lr {DECREE_LR} before "
        f"epoch {prof.milestones[0]}, {DECREE_LATE_LRS[0]} before epoch {prof.milestones[1]}, then "
        f"{DECREE_LATE_LRS[1]} (the code's {prof.name} settings); uniform random initial mask and pattern",
        "lambda": f"loss −cos + λ‖m‖₁, λ₀ = {DECREE_LAMBDA_INIT:g}; ×{DECREE_LAMBDA_FACTOR:g} (while below "
        f"{DECREE_LAMBDA_MAX:g}) / ÷{DECREE_LAMBDA_FACTOR:g} (while ≥ {prof.lambda_min:g}) after more than "
        f"{DECREE_PATIENCE} consecutive successes / failures; reset to λ₀ after more than {2 * DECREE_PATIENCE} "
        f"successes below {prof.lambda_min:g}",
        "stop": f"end of an epoch (from epoch {prof.milestones[1]}, the schedule's end) whose mean batch cosine "
        f"> {DECREE_COS_THRESHOLD} after more than {prof.stop_patience} steps without a smaller successful mask",
        "budget": {"epochs": epochs, "steps": steps, "seconds": seconds},
        "score": f"PL1 = ‖m‖₁ / ({DECREE_MASK_CHANNELS}·H·W) of the smallest successful mask; 1.0 when none "
        "succeeded",
        "trigger_region": "decree_mask_in_region = Σ_region m / Σ m; decree_region_share = the region's share "
        "of the image (a uniform mask's)" if with_region else None,
        "threshold": threshold,
        "threshold_calibration": DECREE_CALIBRATION,
    }  # fmt: skip
