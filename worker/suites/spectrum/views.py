"""Metrics of q augmented views per row: LiDAR (Thilak et al., 2023, arXiv 2312.04000), the effective rank of
the LDA matrix whose classes are the views of one sample."""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.common.arrays import check_finite, native
from worker.suites.common.device import resolve_device
from worker.suites.spectrum.gram import GRAM_DTYPE
from worker.suites.spectrum.metrics import rankme

# δ regularises Σ_w, ε is added after normalising λ (the paper's equations).
LIDAR_DELTA = 1e-4
LIDAR_EPS = 1e-7
LIDAR_CHUNK_SAMPLES = 1024  # samples (n) whose q views are on the device at once


def lidar(
    views: np.ndarray | torch.Tensor,
    *,
    delta: float = LIDAR_DELTA,
    eps: float = LIDAR_EPS,
    device: str | torch.device | None = None,
    chunk_samples: int = LIDAR_CHUNK_SAMPLES,
) -> float:
    """LiDAR (Thilak et al., 2023, arXiv 2312.04000, Sec. 3): effective rank of the LDA matrix whose classes
    are the q augmented views of each of n samples. views: (n, q, D), n ≥ 2, q ≥ 2.

        μ_x = mean_i e_i(x),  μ = mean_x μ_x
        Σ_b = 1/(n−1) Σ_x (μ_x − μ)(μ_x − μ)ᵀ
        Σ_w = 1/(n(q−1)) Σ_x Σ_i (e_i(x) − μ_x)(e_i(x) − μ_x)ᵀ + δ I,   δ = 1e-4
        Σ_LiDAR = Σ_w^{−½} Σ_b Σ_w^{−½},  λ its eigenvalues (clamped at 0)
        p_k = λ_k / Σ_j λ_j + ε,  ε = 1e-7,   LiDAR = exp(−Σ_k p_k log p_k)

    Unbiased normalisations and ε after normalising follow the paper's equations (the reference
    implementations differ: reptrix uses sums without 1/(n−1) and runs a PCA of Σ_LiDAR's rows; we do not).
    Σ_w^{−½} = V diag(w^{−½}) Vᵀ from eigh (Σ_w is SPD thanks to δ). All D eigenvalues enter p, so a
    rank-deficient Σ_b (n − 1 < D) adds D − n + 1 terms of ε·log ε, as in the paper's formula. Σ_b = 0
    gives 0. Computed in float64 on `device`, the within-sample scatter accumulated over chunks of samples.
    """
    dev = resolve_device(device, views)
    v = views if isinstance(views, torch.Tensor) else torch.from_numpy(native(np.asarray(views)))
    if v.ndim != 3:
        raise ValueError(f"lidar needs views of shape (n, q, D), got {tuple(v.shape)}")
    n, q, d = v.shape
    if n < 2 or q < 2:
        raise ValueError(f"lidar needs n ≥ 2 samples and q ≥ 2 views each, got n={n}, q={q}")
    means, scatter_w = _sample_means_and_scatter(v, dev, chunk_samples)
    centred = means - means.mean(dim=0)
    sigma_b = centred.T @ centred / (n - 1)
    sigma_w = scatter_w / (n * (q - 1)) + delta * torch.eye(d, dtype=GRAM_DTYPE, device=dev)
    w, vecs = torch.linalg.eigh(_sym(sigma_w))
    inv_sqrt = (vecs * w.clamp_min(torch.finfo(GRAM_DTYPE).tiny).rsqrt()) @ vecs.T
    lam = torch.linalg.eigvalsh(_sym(inv_sqrt @ sigma_b @ inv_sqrt)).clamp_min(0.0)
    return rankme(lam.cpu().numpy()[::-1], eps=eps)


def _sample_means_and_scatter(
    v: torch.Tensor, dev: torch.device, chunk_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ_x for every sample (n, D), Σ_x Σ_i (e_i(x) − μ_x)(e_i(x) − μ_x)ᵀ (D, D)) in float64 on `dev`,
    `chunk_samples` samples at a time; ValueError on NaN/Inf."""
    n, _, d = v.shape
    means = torch.empty((n, d), dtype=GRAM_DTYPE, device=dev)
    scatter_w = torch.zeros((d, d), dtype=GRAM_DTYPE, device=dev)
    for a in range(0, n, max(1, chunk_samples)):
        b = min(n, a + max(1, chunk_samples))
        x = v[a:b].to(device=dev, dtype=GRAM_DTYPE)
        check_finite(x)
        mu_x = x.mean(dim=1)
        means[a:b] = mu_x
        dev_x = (x - mu_x[:, None, :]).reshape(-1, d)
        scatter_w.addmm_(dev_x.T, dev_x)
    return means, scatter_w


def _sym(a: torch.Tensor) -> torch.Tensor:
    return (a + a.T) * 0.5
