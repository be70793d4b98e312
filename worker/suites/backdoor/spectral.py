"""Spectral signature (Tran, Li & Madry, NeurIPS 2018) on k-means pseudo-labels: the pool scan has no labels,
so clusters of the embeddings stand in for classes.

Robust pseudo-classes (``merge_small_clusters``): the signature needs the poisons to be a minority *inside* a
class. When a backdoor gathers enough poisons, k-means gives them a cluster of their own and the signature, now
computed within an all-poison cluster, says nothing. A pseudo-class is therefore required to hold at least
MIN_CLASS_SHARE of the pool, above the poison shares the scan is meant for (SPECTRE, Hayase et al. ICML 2021,
likewise works with an upper bound on the poison share): smaller clusters are merged into the nearest one.

k-means is Lloyd's algorithm with k-means++ seeding (Arthur & Vassilvitskii, SODA 2007), float32, distances
chunked under SIMILARITY_BUDGET bytes per block.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.common.arrays import NORMALIZE_EPS, l2_normalize
from worker.suites.common.budget import rows_per_chunk
from worker.suites.common.device import resolve_device

from .knn import SIMILARITY_BUDGET, as_rows

KMEANS_ITERS = 100  # Lloyd rounds at most
MIN_CLASS_SHARE = 0.03  # robust pseudo-classes hold ≥ 3 % of the pool (poison shares of interest: 0.5–2 %)


def kmeans(embeddings: np.ndarray | torch.Tensor, n_clusters: int, *, seed: int = 0, iters: int = KMEANS_ITERS,
           device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """Lloyd's k-means with k-means++ seeding on the rows as given (float32), seeded by `seed`; stops when no
    assignment changes or after `iters` rounds. An emptied cluster is re-seeded with the point farthest from
    its centre. Returns int64 labels 0..n_clusters−1."""
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev)
    n_clusters = max(1, min(n_clusters, z.shape[0]))
    g = torch.Generator().manual_seed(seed)
    sq = (z * z).sum(dim=1)
    centres = _kmeans_pp(z, sq, n_clusters, g)
    labels = None
    for _ in range(iters):
        dist, new = _assign(z, sq, centres)
        if labels is not None and bool((new == labels).all()):
            break
        labels = new
        centres = _update(z, labels, centres, dist, n_clusters)
    if labels is None:
        labels = _assign(z, sq, centres)[1]
    return labels.cpu().numpy().astype(np.int64)


def _kmeans_pp(z: torch.Tensor, sq: torch.Tensor, n_clusters: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability ∝ squared distance to the nearest centre."""
    n = z.shape[0]
    centres = z[int(torch.randint(n, (1,), generator=g))][None].clone()
    d2 = _sqdist(z, sq, centres).squeeze(1)
    for _ in range(1, n_clusters):
        prob = d2.clamp_min(0).double().cpu()
        j = (
            int(torch.multinomial(prob, 1, generator=g))
            if prob.sum() > 0
            else int(torch.randint(n, (1,), generator=g))
        )
        centres = torch.cat([centres, z[j][None]])
        d2 = torch.minimum(d2, _sqdist(z, sq, z[j][None]).squeeze(1))
    return centres


def _update(z: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, dist: torch.Tensor,
            n_clusters: int) -> torch.Tensor:  # fmt: skip
    """Lloyd's update: each centre the mean of its points; an empty one re-seeded with the worst-fitted point."""
    sums = torch.zeros_like(centres).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=n_clusters).to(z.dtype)
    empty = counts == 0
    centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
    for c in torch.nonzero(empty).flatten().tolist():
        far = int(dist.argmax())
        centres[c] = z[far]
        dist[far] = -1
    return centres


def _sqdist(z: torch.Tensor, sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (sq[:, None] - 2 * z @ centres.T + (centres * centres).sum(dim=1)[None]).clamp_min(0)


def _assign(z: torch.Tensor, sq: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest centre, its index) per row, rows chunked under SIMILARITY_BUDGET."""
    rows = rows_per_chunk(SIMILARITY_BUDGET, 4 * centres.shape[0])
    dist, lab = [], []
    for a in range(0, z.shape[0], rows):
        d, i = _sqdist(z[a : a + rows], sq[a : a + rows], centres).min(dim=1)
        dist.append(d)
        lab.append(i)
    return torch.cat(dist), torch.cat(lab)


def merge_small_clusters(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, min_size: float, *,
                         device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """Robust pseudo-classes: while more than one cluster is left and the smallest (lowest label on ties) has
    fewer than `min_size` rows, merge it into the cluster whose centroid is nearest by cosine (centroid = mean of
    the L2-normalised rows; ties to the lower label). Returns labels renumbered 0..K′−1 in label order."""
    dev = resolve_device(device, embeddings)
    z = l2_normalize(as_rows(embeddings, dev)).to(torch.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != z.shape[0]:
        raise ValueError(f"{len(labels)} labels for {z.shape[0]} rows")
    ids, lab = np.unique(labels, return_inverse=True)
    k = len(ids)
    sums = torch.zeros((k, z.shape[1]), dtype=torch.float64, device=dev).index_add_(
        0, torch.from_numpy(lab).to(dev), z
    )
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    alive = np.ones(k, bool)
    while alive.sum() > 1:
        c = int(np.flatnonzero(alive)[np.argmin(counts[alive])])
        if counts[c] >= min_size:
            break
        cent = sums / sums.norm(dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
        sim = (cent @ cent[c]).cpu().numpy()
        sim[~alive | (np.arange(k) == c)] = -np.inf
        t = int(np.argmax(sim))
        sums[t] += sums[c]
        counts[t] += counts[c]
        alive[c] = False
        lab[lab == c] = t
    return np.unique(lab, return_inverse=True)[1].astype(np.int64)


def spectral_signature(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, *,
                       device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """Spectral signature (Tran, Li & Madry, NeurIPS 2018), per (pseudo-)class c:

        s_i = |⟨z_i − μ_c, v_c⟩|,   μ_c = mean of class c,   v_c = top right singular vector of the centred
        class matrix [z_j − μ_c]_{j ∈ c}.

    v_c is the top eigenvector of the smaller of the two Gram matrices (XᵀX, D×D, or XXᵀ, n_c×n_c, then
    v = Xᵀu/‖Xᵀu‖), in float64. Classes with one member score 0. Poisons of a class share a direction the
    clean samples lack, so they stand out along v_c."""
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev).to(torch.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != z.shape[0]:
        raise ValueError(f"{len(labels)} labels for {z.shape[0]} rows")
    out = torch.zeros(z.shape[0], dtype=torch.float64, device=dev)
    for c in np.unique(labels):
        idx = torch.from_numpy(np.flatnonzero(labels == c)).to(dev)
        if idx.numel() < 2:
            continue
        x = z[idx] - z[idx].mean(dim=0)
        out[idx] = (x @ _top_direction(x)).abs()
    return out.cpu().numpy()


def _top_direction(x: torch.Tensor) -> torch.Tensor:
    """Top right singular vector of x, from the smaller Gram matrix."""
    if x.shape[1] <= x.shape[0]:
        return torch.linalg.eigh(x.T @ x)[1][:, -1]
    u = torch.linalg.eigh(x @ x.T)[1][:, -1]
    v = x.T @ u
    return v / v.norm().clamp_min(NORMALIZE_EPS)
