"""Exact PCA to two dimensions (Pearson 1901; as scikit-learn's ``PCA(n_components=2)`` with its full solver).

With the rows centred, Xc = X − mean, the covariance C = Xcᵀ Xc / (n − 1) (D × D) is accumulated in float64,
a chunk of rows at a time, and diagonalised (``torch.linalg.eigh``); the coordinates are Xc v₁, Xc v₂ for its
two leading eigenvectors, and the explained variance ratio of component k is λ_k / tr C. When D > n the
n × n Gram matrix G = Xc Xcᵀ has the same non-zero eigenvalues (times n − 1) and smaller size: its eigenvectors
u_k give the coordinates √λ_k(G) u_k, the same numbers.

Signs follow scikit-learn (``svd_flip(u_based_decision=False)``, ≥ 1.5): each component's loading of largest
magnitude is positive. An embedding with one dimension, or rank < 2, has a zero second coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worker.suites.common.arrays import matrix_shape, to_tensor
from worker.suites.common.budget import MEMORY_BUDGET, rows_per_chunk
from worker.suites.common.device import resolve_device

COMPONENTS = 2


@dataclass(frozen=True)
class Pca2d:
    """coords: n × 2 float64; explained_variance_ratio: the 2 components' shares of the total variance;
    components: 2 × D unit loadings (rows)."""

    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray


def _centred_chunks(x: np.ndarray, mean: torch.Tensor, device: torch.device):  # noqa: ANN202
    step = rows_per_chunk(MEMORY_BUDGET, 8 * x.shape[1])
    for a in range(0, x.shape[0], step):
        yield to_tensor(x[a : a + step], device, torch.float64) - mean


def _flip(components: torch.Tensor) -> torch.Tensor:
    """Each row's largest-|loading| entry made positive (scikit-learn's svd_flip on Vᵀ)."""
    pivot = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    return components * torch.where(pivot < 0, -1.0, 1.0).to(components.dtype)


def pca_2d(x: np.ndarray, device: str | torch.device | None = None) -> Pca2d:
    """The exact 2-D PCA of the rows of `x` (n × D, n ≥ 2); see the module docstring."""
    n, d = matrix_shape(x, real=True)
    if n < 2:
        raise ValueError("PCA needs at least 2 rows")
    dev = resolve_device(device, x)
    mean = torch.zeros(d, dtype=torch.float64, device=dev)
    for chunk in _centred_chunks(x, mean, dev):
        mean += chunk.sum(dim=0)
    mean /= n
    k = min(COMPONENTS, d)
    if d <= n:
        cov = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for chunk in _centred_chunks(x, mean, dev):
            cov += chunk.T @ chunk
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        total = evals.clamp_min(0).sum()
        comps = _flip(evecs[:, -k:].flip(1).T)
        lead = evals[-k:].flip(0).clamp_min(0)
        coords = torch.cat([chunk @ comps.T for chunk in _centred_chunks(x, mean, dev)])
    else:
        xc = torch.cat(list(_centred_chunks(x, mean, dev)))
        evals, evecs = torch.linalg.eigh(xc @ xc.T)
        total = evals.clamp_min(0).sum()
        lead = evals[-k:].flip(0).clamp_min(0)
        u = evecs[:, -k:].flip(1)
        raw = xc.T @ u  # D × k: Xcᵀ u_k = √λ_k v_k
        comps = raw.T / raw.norm(dim=0).clamp_min(1e-300)[:, None]
        flipped = _flip(comps)
        coords = xc @ flipped.T
        comps = flipped
    coords_np = np.zeros((n, COMPONENTS))
    coords_np[:, :k] = coords.cpu().numpy()
    ratio = np.zeros(COMPONENTS)
    if float(total) > 0:
        ratio[:k] = (lead / total).cpu().numpy()
        coords_np[:, ratio == 0] = 0.0  # a zero-variance direction draws as 0, not as rounding noise
    comps_np = np.zeros((COMPONENTS, d))
    comps_np[:k] = comps.cpu().numpy()
    return Pca2d(coords=coords_np, explained_variance_ratio=ratio, components=comps_np)
