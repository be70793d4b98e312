"""The encoder scan: is an encoder backdoored? Known-trigger collapse (collapse.py), k-NN attack success when
labels exist, DECREE trigger inversion (decree.py) and the verdict `backdoor_risk` (risk.py), over unlabeled
clean images (shared/METRICS.md, "Backdoor suite", encoder-level scores)."""

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
    DECREE_COS_THRESHOLD,
    DECREE_EARLY_STOP,
    DECREE_LAMBDA_FACTOR,
    DECREE_LAMBDA_INIT,
    DECREE_LAMBDA_MIN,
    DECREE_LR_SCHEDULE,
    DECREE_PATIENCE,
    DECREE_PL1_THRESHOLD,
    DECREE_SECONDS,
    DECREE_STEPS,
    decree,
)
from .figures import decree_figure, trigger_table
from .knn import KNN_K
from .risk import backdoor_risk

MAX_SCAN_IMAGES = 1000  # clean images used by the encoder scan (a seeded subsample when more are given)
DEFAULT_TRIGGERS = tuple(trig.TRIGGERS)  # badencoder, ssl_patch, ctrl, grid, blend
# DECREE uses raw cosines (the paper); when clean images alone already have a raw mean pairwise cosine above
# this, the 0.99 target is near and a warning suggests decree_center=True (cosines centred with the clean mean).
DECREE_RAW_COS_WARN = 0.9
KNOWN_SHARE = 0.4  # share of the progress bar for the known triggers when DECREE runs after them


def scan_encoder(
    encode: EncodeFn,
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    triggers: Sequence[str] | None = None,
    decree_steps: int = DECREE_STEPS,
    decree_seconds: float = DECREE_SECONDS,
    decree_threshold: float = DECREE_PL1_THRESHOLD,
    decree_center: bool = False,
    decree_batch: int = DECREE_BATCH,
    max_images: int = MAX_SCAN_IMAGES,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Encoder-level backdoor scan (METRICS.md, "Backdoor suite", encoder-level scores).

    encode: float NCHW in [0, 1] on `device` → features (N×D, or anything reshaped to N rows); it must be
    differentiable for DECREE (decree_steps=0 skips DECREE). images: uint8 N×H×W×C clean images (at most
    `max_images` are used, a seeded subsample); labels (optional, one per image) enable the k-NN attack
    success. triggers: names from worker.suites.backdoor.triggers.TRIGGERS (default: all five). DECREE runs for
    at most decree_steps steps / decree_seconds seconds (early stop usually ends it sooner), decree_batch
    images a step; decree_threshold is the PL1 decision threshold; decree_center=True makes DECREE use cosines
    centred with the clean mean instead of the paper's raw cosines (for encoders whose clean images already
    have raw cosines near 0.99; a warning says when).

    Metrics (T = each trigger):
      collapse_clean, collapse_raw_clean   centred / raw mean pairwise cosine of the clean embeddings
      collapse_{T}, collapse_{T}_control   centred collapse of T and of its control stamp (higher = suspicious)
      collapse_{T}_excess                  their difference: trigger-specific collapse
      collapse_max, collapse_excess_max    max over the triggers
      knn_asr_{T}, knn_asr_{T}_control, knn_asr_max   k-NN attack success (with labels)
      decree_pl1                           PL1 of DECREE's smallest successful mask (lower = suspicious)
      decree_success, decree_cos, decree_steps, decree_seconds
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
    run_decree = decree_steps > 0 and decree_seconds > 0
    split = KNOWN_SHARE if run_decree else 1.0

    scores, info = known_trigger_scores(encode, images, names, labels=labels, seed=seed, device=dev,
                                        progress=lambda f, msg: progress(split * f, msg))  # fmt: skip
    metrics = _collapse_metrics(scores, info)
    figures: dict[str, Any] = {"triggers": trigger_table(scores)}
    pl1 = None
    if run_decree:
        pl1 = _decree_scan(encode, images, info, metrics, figures, warnings, steps=decree_steps,
                           seconds=decree_seconds, threshold=decree_threshold, center=decree_center,
                           batch=decree_batch, seed=seed, device=dev,
                           progress=lambda f, msg: progress(split + (1 - split) * f, msg))  # fmt: skip
    risk, verdict = backdoor_risk({s.name: s.excess for s in scores}, pl1, decree_threshold)
    metrics["backdoor_risk"] = risk
    figures["verdict"] = verdict
    variant = _variant(dev, images, n_total, rows is not None, seed, info["dim"], names, labels is not None)
    variant["decree"] = None if not run_decree else _decree_variant(decree_center, decree_batch, len(images),
                                                                    decree_steps, decree_seconds, decree_threshold)
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
                 figures: dict[str, Any], warnings: list[str], *, steps: int, seconds: float, threshold: float,
                 center: bool, batch: int, seed: int, device: torch.device,
                 progress: ProgressFn) -> float | None:  # fmt: skip
    """Run DECREE and add its metrics, figure and warnings; returns PL1, or None when DECREE could not run."""
    if not center and info["collapse_raw_clean"] > DECREE_RAW_COS_WARN:
        warnings.append(f"clean images alone have a raw mean pairwise cosine of {info['collapse_raw_clean']:.3f}: "
                        f"DECREE's {DECREE_COS_THRESHOLD} target is close, so small masks may succeed on a clean "
                        "encoder too; consider decree_center=True")  # fmt: skip
    try:
        dr = decree(encode, images, steps=steps, seconds=seconds, batch=batch,
                    center=info["mean"] if center else None, seed=seed, device=device, progress=progress)
    except RuntimeError as err:
        warnings.append(f"DECREE skipped: {err}")
        return None
    metrics.update({"decree_pl1": dr.pl1, "decree_success": float(dr.success), "decree_cos": dr.cos_all,
                    "decree_steps": float(dr.steps), "decree_seconds": dr.seconds})  # fmt: skip
    figures["decree"] = decree_figure(dr, images.shape[1:3], threshold)
    if not dr.success:
        warnings.append(f"DECREE found no mask reaching mean cosine {DECREE_COS_THRESHOLD} within "
                        f"{dr.steps} steps / {dr.seconds:.0f} s; PL1 reported as 1.0 (the full mask)")  # fmt: skip
    return dr.pl1


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


def _decree_variant(center: bool, batch: int, n_images: int, steps: int, seconds: float,
                    threshold: float) -> dict[str, Any]:  # fmt: skip
    """How DECREE ran, for the result's variant."""
    return {
        "cosine": "centred with the clean mean (decree_center=True)" if center
        else "raw (uncentred) mean pairwise cosine, as Feng et al.'s code",
        "success": f"batch mean pairwise cosine > {DECREE_COS_THRESHOLD}",
        "optimizer": f"Adam, lr schedule {list(DECREE_LR_SCHEDULE)} (first step, lr), betas {DECREE_BETAS}, "
        f"batch {min(batch, n_images)}, uniform random initial mask and pattern",
        "lambda": f"loss −cos + λ‖m‖₁, λ₀ = {DECREE_LAMBDA_INIT:g}; ×/÷ {DECREE_LAMBDA_FACTOR:g} after "
        f"{DECREE_PATIENCE} consecutive successes / failures, floor {DECREE_LAMBDA_MIN:g}",
        "early_stop": f"after a success with no smaller mask for > {DECREE_EARLY_STOP} steps",
        "budget": {"steps": steps, "seconds": seconds},
        "score": "PL1 = ‖m‖₁ / (H·W) of the smallest successful mask; 1.0 when none succeeded",
        "threshold": threshold,
        "threshold_calibration": "Feng et al. flag PL1 < 0.1 on their encoders. Calibrated on clean encoders: "
        "our tiny SimCLR ConvNets at 32 px have clean PL1 ≈ 0.3 and backdoored ≤ 0.1 (benchmarks/RESULTS.md, "
        "'backdoor'). Recalibrate for another architecture, input size or dataset by scanning known-clean "
        "encoders of that kind and setting decree_threshold below their PL1",
    }  # fmt: skip
