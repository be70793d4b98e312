"""Ranking metrics of a score against binary labels (higher score = more positive), tie-exact.

Thresholds are the distinct scores, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``:
    TPR(t) = #{pos: s ≥ t} / P,   FPR(t) = #{neg: s ≥ t} / N.
Every function returns NaN when one class is empty (``roc_points`` then divides by 1 instead) and raises
ValueError when the scores are not finite or their count differs from the labels'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ROC_POINTS = 200  # points of a thinned curve for a page
DEFAULT_TPR = 0.95  # FPR at 95 % TPR, the open-set / OOD convention (Hendrycks & Gimpel, ICLR 2017)


def _scores_labels(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positive).ravel().astype(bool)
    if s.size != pos.size:
        raise ValueError(f"{s.size} scores but {pos.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, pos


def roc_counts(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(tps, fps, P, N): cumulative true / false positives at each distinct threshold, highest first."""
    s, pos = _scores_labels(scores, positive)
    order = np.argsort(-s, kind="mergesort")
    ss, pp = s[order], pos[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # counts are taken at the end of each tie group
    n_pos = int(pos.sum())
    return np.cumsum(pp)[last], np.cumsum(~pp)[last], n_pos, s.size - n_pos


def auroc(scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool]) -> float:
    """Area under the ROC curve from ranks (Mann–Whitney U), ties counted one half:

        AUROC = (Σ_{i ∈ pos} r_i − P(P + 1)/2) / (P·N),   r = 1-based ranks of the scores, ties averaged.

    Equals ``sklearn.metrics.roc_auc_score(positive, scores)``.
    """
    s, pos = _scores_labels(scores, positive)
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    first = np.r_[True, ss[1:] != ss[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], ss.size]  # exclusive
    group = np.cumsum(first) - 1
    avg_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 … end
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = avg_rank[group]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fpr_at_tpr(
    scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool], tpr: float = DEFAULT_TPR
) -> float:
    """FPR at the largest threshold whose TPR reaches `tpr`: fpr[first index with tpr_curve ≥ tpr]."""
    tps, fps, n_pos, n_neg = roc_counts(scores, positive)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    hit = np.flatnonzero(tps / n_pos >= tpr)
    return float(fps[hit[0]] / n_neg)


def tpr_at_fpr(scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool], fpr: float) -> float:
    """Largest TPR over thresholds whose FPR is ≤ `fpr` (with the +∞ threshold: TPR 0), as
    max(tpr_curve[fpr_curve ≤ fpr]) of ``sklearn.metrics.roc_curve``."""
    tps, fps, n_pos, n_neg = roc_counts(scores, positive)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ok = fps / n_neg <= fpr
    return float(tps[ok].max() / n_pos) if ok.any() else 0.0


def roc_points(scores: np.ndarray, positive: np.ndarray, max_points: int = ROC_POINTS) -> dict[str, list[float]]:
    """ROC curve {fpr, tpr} from (0, 0) through every distinct threshold, thinned to ≤ max_points evenly spaced
    points (first and last kept) for a page."""
    tps, fps, n_pos, n_neg = roc_counts(scores, positive)
    tpr = np.r_[0.0, tps / max(1, n_pos)]
    fpr = np.r_[0.0, fps / max(1, n_neg)]
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(len(tpr), max_points)).round().astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
