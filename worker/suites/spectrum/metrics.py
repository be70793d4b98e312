"""Metrics of one spectrum: RankMe, α-ReQ, NESum, stable rank and condition, plus the suite's metric keys.

σ are singular values of the embedding matrix Z (descending), λ eigenvalues of its covariance. Degenerate
spectra (documented, tested): an all-zero spectrum (e.g. the centred spectrum of N identical rows) has RankMe 0,
NESum 0, stable rank 0 and condition 0; α-ReQ needs ≥ ALPHA_MIN_POINTS positive covariance eigenvalues in the
fit range and returns None otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# RankMe (Garrido et al., ICML 2023, arXiv 2210.02885): eps added AFTER normalising σ, as in the paper's code;
# the paper evaluates on 25 600 samples.
RANKME_EPS = 1e-7
RANKME_MAX_ROWS = 25_600
# α-ReQ (Agrawal et al., NeurIPS 2022) fit range, 1-based eigenvalue ranks, inclusive. reptrix `alpha.py`
# (the authors' package) fits `eigen[np.arange(5, 100)]` against x = log(index + 1), i.e. 0-based positions
# 5..99 = 1-based ranks 6..100, with weights 1/rank. We follow that code; METRICS.md's "i = 5…99 (1-based)"
# is the same np.arange(5, 100) read as 1-based (off by one). Later reptrix versions default to 11..100.
ALPHA_FIT_RANGE = (6, 100)
ALPHA_MIN_POINTS = 3
FLOAT64_EPS = float(np.finfo(np.float64).eps)

# The suite's metrics at each dimension (full D, and ``{key}@d{k}`` for the Matryoshka prefixes), in figure order.
METRIC_KEYS = (
    "rankme",
    "rankme_centered",
    "alpha_req",
    "alpha_req_r2",
    "nesum",
    "stable_rank",
    "condition",
    "uniformity",
    "collapse_std",
)

Values = Sequence[float] | np.ndarray | torch.Tensor


def rankme(singular_values: Values, eps: float = RANKME_EPS) -> float:
    """RankMe, the smooth effective rank (Garrido et al., ICML 2023, arXiv 2210.02885, eq. 1 and their code).

        p_k = σ_k / Σ_j σ_j + ε,   RankMe = exp(−Σ_k p_k log p_k),   ε = 1e-7 (added after normalising).

    σ are the singular values of the raw, uncentred embeddings (pass min(N, D) of them, like svdvals).
    An all-zero spectrum has no direction at all: RankMe = 0 by definition here.
    """
    s = _as_float64(singular_values)
    total = s.sum()
    if s.size == 0 or total <= 0:
        return 0.0
    p = s / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))


@dataclass(frozen=True)
class AlphaFit:
    """Weighted least-squares power-law fit log λ_i = c − α log i over 1-based ranks [first, last]."""

    alpha: float
    intercept: float
    r2: float
    first: int
    last: int


def alpha_req(eigenvalues: Values, fit_range: tuple[int, int] = ALPHA_FIT_RANGE) -> AlphaFit | None:
    """α-ReQ eigenspectrum decay (Agrawal et al., NeurIPS 2022; reptrix `alpha.py`).

    λ_i are covariance eigenvalues (descending, 1-based rank i). Fit
        log λ_i = c − α log i,   i ∈ [6, 100] ∩ {i : λ_i > 0},
    by least squares with weights w_i = 1/i (Stringer & Pachitariu 2019 / reptrix). Returns α, c and the
    fit's R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (unweighted, over the fitted points; 1 when y is constant and the
    fit is exact). α is scale-free, so λ may be covariance or Gram eigenvalues. Returns None when fewer
    than ALPHA_MIN_POINTS positive eigenvalues fall in the range.
    """
    lam = _as_float64(eigenvalues)
    first, last = fit_range
    n_pos = int(np.count_nonzero(lam > 0))
    last = min(last, n_pos)  # descending: the positive eigenvalues are a prefix
    if last - first + 1 < ALPHA_MIN_POINTS:
        return None
    i = np.arange(first, last + 1, dtype=np.float64)
    x = -np.log(i)  # model y = α·x + c
    y = np.log(lam[first - 1 : last])
    w = 1.0 / i
    sw, swx, swy = w.sum(), (w * x).sum(), (w * y).sum()
    xm, ym = swx / sw, swy / sw
    sxx = (w * (x - xm) ** 2).sum()
    alpha = float((w * (x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - alpha * xm)
    resid = y - (alpha * x + intercept)
    ss_res = float((resid**2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= FLOAT64_EPS * max(1.0, float(np.abs(y).max())) ** 2 * y.size else 0.0
    return AlphaFit(alpha=alpha, intercept=intercept, r2=float(r2), first=first, last=last)


def nesum(eigenvalues: Values) -> float:
    """NESum, normalised eigenvalue sum (He & Ozay, ICML 2022): Σ_i λ_i / λ_1 over covariance eigenvalues.

    0 when the covariance is zero (all rows identical).
    """
    lam = _as_float64(eigenvalues)
    if lam.size == 0 or lam.max() <= 0:
        return 0.0
    return float(lam.sum() / lam.max())


def stable_rank(singular_values: Values) -> float:
    """Stable rank ‖Z‖_F² / ‖Z‖_2² = Σ_k σ_k² / σ_1² (raw σ; Rudelson & Vershynin 2007). 0 for Z = 0."""
    s = _as_float64(singular_values)
    if s.size == 0 or s.max() <= 0:
        return 0.0
    return float(np.sum(s**2) / s.max() ** 2)


def condition(singular_values: Values) -> float:
    """Inverse condition number σ_min>0 / σ_max ∈ [0, 1] (raw σ).

    σ_min>0 is the smallest σ above the eigenvalue floor (σ at or below it are exact zeros after
    ``gram_spectrum``). 0 for Z = 0.
    """
    s = _as_float64(singular_values)
    pos = s[s > 0]
    if pos.size == 0:
        return 0.0
    return float(pos.min() / pos.max())


def _as_float64(values: Values) -> np.ndarray:
    """A flat float64 numpy copy (or view) of a sequence, an array or a tensor (on any device)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).ravel()
