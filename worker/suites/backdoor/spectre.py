"""SPECTRE-style robust spectral score (Hayase, Kong, Somani & Oh, "SPECTRE: Defending Against Backdoor Attacks
Using Robust Statistics", ICML 2021; code github.com/SewoongLab/spectre-defense, quantum_filters.jl) on the robust
pseudo-classes of spectral.merge_small_clusters.

The spectral signature looks along the top variance direction of a class; in a pseudo-class that mixes several
natural clusters that direction is between-cluster variance, not the poisons'. SPECTRE whitens the class with a
*robust* covariance (the clean majority's), so any direction the poisons add stands out, and scores with the
quantum-entropy (QUE) score. Per pseudo-class c with n_c rows:

    x_i   = PCA_r(z_i − mean_c),  r = min(SPECTRE_DIMS, n_c // 4, D)          (SPECTRE: PCA to k dimensions)
    μ̂, Σ̂  = mean and covariance of the h = n_c − round(SPECTRE_TRIM · n_c) rows of smallest Mahalanobis distance,
            SPECTRE_CSTEPS concentration steps from all rows (FAST-MCD's C-step, Rousseeuw & Van Driessen 1999;
            SPECTRE's own estimator is the DKK17 filter, heavier and needing the poison share)
    w_i   = Σ̂^(−1/2) (x_i − μ̂),   Σ′ = covariance of the w_i over the whole class
    Q     = exp(α (Σ′ − I) / (‖Σ′‖₂ − 1)) / tr(·),   α = SPECTRE_ALPHA = 4 (SPECTRE's default)
    τ_i   = w_iᵀ Q w_i

Clean rows have E[τ] ≈ 1 in every class, so the scores compare across classes. α → 0 gives the Mahalanobis
distance, α → ∞ the spectral signature in the whitened space. SPECTRE chooses r by the QUE objective among
several; one fixed r here (faster, deterministic). Classes under SPECTRE_MIN_ROWS rows score 0.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.common.device import resolve_device

from .knn import as_rows

SPECTRE_DIMS = 16  # PCA dimensions per pseudo-class
SPECTRE_TRIM = 0.25  # share left out of the robust covariance (poisons may be a quarter of their class)
SPECTRE_CSTEPS = 5  # concentration steps
SPECTRE_ALPHA = 4.0  # QUE's α (SPECTRE's default)
SPECTRE_MIN_ROWS = 8
EIG_FLOOR = 1e-9  # eigenvalues of Σ̂ below this share of the largest are floored there


def spectre_scores(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, *, dims: int = SPECTRE_DIMS,
                   trim: float = SPECTRE_TRIM, alpha: float = SPECTRE_ALPHA,
                   device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """QUE score τ_i of every row within its (pseudo-)class (module docstring), float64."""
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev).to(torch.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != z.shape[0]:
        raise ValueError(f"{len(labels)} labels for {z.shape[0]} rows")
    out = torch.zeros(z.shape[0], dtype=torch.float64, device=dev)
    for c in np.unique(labels):
        idx = torch.from_numpy(np.flatnonzero(labels == c)).to(dev)
        if idx.numel() >= SPECTRE_MIN_ROWS:
            out[idx] = _que(z[idx], dims, trim, alpha)
    return out.cpu().numpy()


def _que(x: torch.Tensor, dims: int, trim: float, alpha: float) -> torch.Tensor:
    n = x.shape[0]
    x = x - x.mean(dim=0)
    r = max(1, min(dims, n // 4, x.shape[1]))
    vecs = torch.linalg.eigh(x.T @ x)[1][:, -r:] if x.shape[1] <= n else _right_vectors(x, r)
    y = x @ vecs
    keep = torch.arange(n, device=x.device)
    h = n - round(trim * n)
    for _ in range(SPECTRE_CSTEPS):
        w = _whiten(y, y[keep])
        keep = torch.argsort((w * w).sum(dim=1))[:h]
    w = _whiten(y, y[keep])
    if r == 1:
        return (w * w).sum(dim=1)
    wc = w - w.mean(dim=0)
    ev, evec = torch.linalg.eigh(wc.T @ wc / n)
    top = float(ev[-1])
    if top - 1.0 <= 1e-12:  # nothing stretched: Q = I / r (the Mahalanobis distance)
        return (w * w).sum(dim=1) / r
    ex = alpha * (ev - 1.0) / (top - 1.0)
    q = (evec * torch.exp(ex - ex.max())) @ evec.T
    q = q / torch.trace(q)
    return ((w @ q) * w).sum(dim=1)


def _right_vectors(x: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r right singular vectors of x from the n × n Gram matrix (fewer rows than columns)."""
    u = torch.linalg.eigh(x @ x.T)[1][:, -r:]
    v = x.T @ u
    return v / v.norm(dim=0, keepdim=True).clamp_min(1e-12)


def _whiten(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(y − mean(ref)) Σ^(−1/2), Σ the population covariance of ref (eigenvalues floored at EIG_FLOOR · max)."""
    mu = ref.mean(dim=0)
    rc = ref - mu
    ev, evec = torch.linalg.eigh(rc.T @ rc / ref.shape[0])
    ev = ev.clamp_min(float(ev.max()) * EIG_FLOOR if float(ev.max()) > 0 else 1.0)
    return (y - mu) @ evec / ev.sqrt()
