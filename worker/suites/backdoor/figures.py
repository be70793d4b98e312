"""Figure data of the backdoor suite's pages: the recovered DECREE mask and pattern as small uint8 images, the
known-trigger table, and the pool scan's score histograms. (The pool scan's montage is suite.montage.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from . import triggers as trig

if TYPE_CHECKING:
    from .collapse import TriggerScore
    from .decree import DecreeResult

FIGURE_MAX_SIDE = 64  # recovered mask / pattern images wider than this are area-downsampled for the page
HIST_BINS = 40  # bins of the pool scan's score histograms


def image_figure(a: np.ndarray, max_side: int = FIGURE_MAX_SIDE) -> list:
    """A float image in [0, 1] (H×W or H×W×C) as nested lists of uint8 for the page; area-downsampled so the
    longer side is at most `max_side`."""
    x = torch.as_tensor(np.asarray(a, dtype=np.float64))
    chw = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    h, w = chw.shape[-2:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        chw = F.adaptive_avg_pool2d(chw, (max(1, round(h * scale)), max(1, round(w * scale))))
    out = (chw[0].clamp(0, 1) * 255).round().to(torch.uint8)
    out = out[0] if x.ndim == 2 else out.permute(1, 2, 0)
    return out.tolist()


def trigger_table(scores: Sequence[TriggerScore]) -> list[dict[str, Any]]:
    """One row per scanned trigger: its source, control stamp, collapse scores and k-NN attack success."""
    return [
        {"trigger": s.name, "source": trig.TRIGGERS[s.name].source, "control": s.control_name,
         "collapse": s.collapse, "control_collapse": s.control, "excess": s.excess,
         "raw_collapse": s.raw_collapse, "knn_asr": s.asr, "knn_asr_control": s.asr_control,
         "knn_clean_rate_into_target": s.asr_clean, "knn_target": s.target}
        for s in scores
    ]  # fmt: skip


def decree_figure(dr: DecreeResult, image_size: Sequence[int], threshold: float) -> dict[str, Any]:
    """DECREE's recovered mask, pattern and stamp (mask·pattern) as images, with its outcome and trace; with a
    known trigger region, the share of the mask's mass inside it and the region's share of the image."""
    return {
        "mask": image_figure(dr.mask),
        "pattern": image_figure(dr.pattern),
        "stamp": image_figure(dr.mask[..., None] * dr.pattern),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "pl1": dr.pl1,
        "success": dr.success,
        "cos_batch": dr.cos_batch,
        "cos_all_images": dr.cos_all,
        "first_success_step": dr.first_success_step,
        "stopped": dr.stopped,
        "epochs": dr.epochs,
        "schedule_done": dr.schedule_done,
        "similarity": dr.similarity,
        "mask_in_region": dr.mask_in_region,
        "region_share": dr.region_share,
        "trace": dr.trace,
        "direction": "lower PL1 = more suspicious: a small stamp collapses the encoder",
        "threshold": threshold,
    }


def histogram(x: np.ndarray, positive: np.ndarray | None) -> dict[str, Any]:
    """HIST_BINS equal-width bins over the scores, with the poisoned samples' counts when flags are given."""
    edges = np.histogram_bin_edges(x, bins=HIST_BINS)
    out: dict[str, Any] = {"edges": edges.tolist(), "counts": np.histogram(x, edges)[0].tolist()}
    if positive is not None:
        out["poison_counts"] = np.histogram(x[positive], edges)[0].tolist()
    return out
