"""The scores the equivariance suite reports: R² (per output and SIE's global one), balanced accuracy, retrieval
MRR / Hit@k with ties, chance MRR, curve areas, row-wise cosine and relative invariance. numpy float64 unless
noted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

HIT_KS = (1, 5, 10)
COS_EPS = 1e-8
REL_EPS = 1e-12  # relative_invariance: a baseline below this share of the mean ‖z‖² + ‖w‖² is 0


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _f64(a: Any) -> np.ndarray:
    return np.asarray(_np(a), dtype=np.float64)


def r2_per_output(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """Mean over outputs of R²_j = 1 − Σ_i (y_ij − ŷ_ij)² / Σ_i (y_ij − ȳ_j)² (scikit-learn r2_score,
    multioutput="uniform_average"; a constant column scores 1 when predicted exactly, else 0)."""
    y, pred = _f64(y).reshape(len(y), -1), _f64(pred).reshape(len(y), -1)
    rss = ((y - pred) ** 2).sum(axis=0)
    tss = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / np.where(tss > 0, tss, 1.0), np.where(rss > 0, 0.0, 1.0))
    return float(r2.mean())


def r2_outputs(y: np.ndarray, pred: np.ndarray) -> list[float]:
    """R² of each output column separately (r2_per_output of one column)."""
    y, pred = y.reshape(len(y), -1), pred.reshape(len(y), -1)
    return [r2_per_output(y[:, j], pred[:, j]) for j in range(y.shape[1])]


def r2_global(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """SIE's R² (Garrido et al. 2023, eval_angle_prediction.py): 1 − Σ(y − ŷ)² / Σ(y − ȳ)², sums over every
    entry, ȳ the mean of all target entries (one scalar)."""
    y, pred = _f64(y), _f64(pred)
    tss = float(((y - y.mean()) ** 2).sum())
    rss = float(((y - pred) ** 2).sum())
    if tss <= 0:
        return 1.0 if rss == 0 else 0.0
    return 1.0 - rss / tss


def balanced_accuracy(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """Mean over the classes present in y of the recall (scikit-learn balanced_accuracy_score)."""
    y, pred = np.asarray(_np(y)).ravel(), np.asarray(_np(pred)).ravel()
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else math.nan


def retrieval_scores(sim: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, ks: Sequence[int] = HIT_KS
                     ) -> dict[str, float]:  # fmt: skip
    """MRR and Hit@k of the target candidate, from similarities sim [M, G] (higher = closer) and target
    indices [M] (SIE, Garrido et al. 2023, eval_MRR_Hk.py, with ties). With a = #candidates strictly closer
    than the target and t = #other candidates tied with it, the rank is uniform over a+1 .. a+t+1 (a random
    order among ties): 1/rank and [rank ≤ k] are their expectations, so an encoder that maps every candidate
    to the same point scores the chance level."""
    s = _f64(sim)
    tgt = np.asarray(_np(target)).astype(np.int64).ravel()
    m = s.shape[0]
    if m == 0:
        return {"mrr": math.nan, **{f"hit{k}": math.nan for k in ks}}
    st = s[np.arange(m), tgt][:, None]
    above = (s > st).sum(axis=1).astype(np.float64)
    ties = (s == st).sum(axis=1).astype(np.float64) - 1.0
    # E[1/r], r uniform on a+1..a+t+1: (H(a+t+1) − H(a)) / (t+1), H the harmonic numbers
    g = s.shape[1]
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, g + 1))])
    rr = (harmonic[(above + ties + 1).astype(int)] - harmonic[above.astype(int)]) / (ties + 1.0)
    out = {"mrr": float(rr.mean())}
    for k in ks:
        out[f"hit{k}"] = float((np.clip(k - above, 0.0, ties + 1.0) / (ties + 1.0)).mean())
    return out


def chance_mrr(n_candidates: int) -> float:
    """MRR of a uniformly random ranking of n candidates: (1/n) Σ_{r=1..n} 1/r."""
    return float(np.mean(1.0 / np.arange(1, n_candidates + 1)))


def curve_auc(strengths: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under values over strengths / max(strengths) ∈ [0, 1]; the curve must include its
    strength-0 point."""
    s = np.asarray(strengths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, v = s[order] / s.max(), v[order]
    return float(np.sum((s[1:] - s[:-1]) * (v[1:] + v[:-1]) * 0.5))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cos(a_i, b_i) = a_i·b_i / max(‖a_i‖‖b_i‖, eps), float64 (torch)."""
    a, b = a.double(), b.double()
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(COS_EPS)


def relative_invariance(z: torch.Tensor, w: torch.Tensor) -> float:
    """1 − mean_i ‖w_i − z_i‖² / mean_{i≠j} ‖w_j − z_i‖², z = f(x) and w = f(gx) row-aligned [n, D] (n ≥ 2).

    Bouchacourt et al. 2021 ("Grounding inductive biases in natural images: invariance stems from variations
    in data", NeurIPS; their relative invariance (d(z, shuffled z_g) − d(z, z_g)) / d(z, shuffled z_g)) with
    squared L2 distances, as a ratio of means, and the image-shuffled baseline taken over every pair i ≠ j
    instead of one random permutation (no seed). Only differences of features enter: a constant offset added
    to every feature vector cancels exactly, a global scale cancels in the ratio, and so does any orthogonal
    map of feature space. 1 = f(gx) = f(x); 0 = f(gx) no closer to f(x) than another image's f(gx').
    NaN when every view of every image has the same features (the ratio is 0/0).

    Closed form in float64 after subtracting mean(z) from both (exact for any offset): Σ_{i,j}‖w_j − z_i‖² =
    n Σ‖z_i‖² + n Σ‖w_j‖² − 2 (Σ z_i)·(Σ w_j), less the diagonal Σ_i ‖w_i − z_i‖²."""
    z, w = z.double(), w.double()
    n = z.shape[0]
    if n < 2:
        return math.nan
    mu = z.mean(dim=0, keepdim=True)
    z, w = z - mu, w - mu
    same = float(((w - z) ** 2).sum())
    every = n * float((z**2).sum()) + n * float((w**2).sum()) - 2.0 * float(z.sum(dim=0) @ w.sum(dim=0))
    other = (every - same) / (n * (n - 1))
    scale = (float((z**2).sum()) + float((w**2).sum())) / n
    if not other > REL_EPS * max(scale, 1e-300):
        return math.nan
    return 1.0 - (same / n) / other


def nanmean(v: list[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan
