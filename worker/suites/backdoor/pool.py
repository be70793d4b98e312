"""The pool scan: which samples of a possibly poisoned, unlabeled pool look planted? Per-sample k-NN density,
spectral signature on k-means pseudo-labels and, with the images, CTRL frequency and grid Nyquist energy; the
top-k suspicious samples, and AUROC / TPR at low FPR when ground-truth poison flags are given
(shared/METRICS.md, "Backdoor suite", sample-level scores)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import l2_normalize
from worker.suites.common.device import resolve_device
from worker.suites.common.roc import auroc, roc_points, tpr_at_fpr

from .figures import histogram
from .image_scores import ctrl_energy, grid_nyquist_energy
from .knn import POOL_K, as_rows, knn_density
from .spectral import KMEANS_ITERS, kmeans, spectral_signature

DEFAULT_CLUSTERS = 10  # k-means pseudo-labels stand in for classes (CIFAR-10-like default); ≤ N / MIN_CLUSTER
MIN_CLUSTER = 20
ROBUST_Z_SCALE = 1.4826  # MAD → σ for a normal distribution
ROBUST_Z_FLAG = 3.5  # Iglewicz & Hoaglin's modified z-score outlier rule
TPR_AT_FPR = (0.01, 0.05)
TOP_K = 50
POOL_SCORES = ("knn_density", "spectral", "ctrl_energy", "grid_energy")


def zscore(x: np.ndarray) -> np.ndarray:
    """(x − mean) / std over the pool (population std); zeros when the std is 0."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-score (Iglewicz & Hoaglin 1993): (x − median) / (1.4826 · MAD); the ordinary z-score when
    the MAD is 0."""
    x = np.asarray(x, dtype=np.float64)
    mad = np.median(np.abs(x - np.median(x)))
    return (x - np.median(x)) / (ROBUST_Z_SCALE * mad) if mad > 0 else zscore(x)


def scan_pool(
    embeddings: np.ndarray,
    *,
    images: np.ndarray | None = None,
    poison: np.ndarray | None = None,
    k: int = POOL_K,
    n_clusters: int | None = None,
    top_k: int = TOP_K,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Sample-level scan of a possibly poisoned pool (METRICS.md, "Backdoor suite", sample-level scores).

    The embeddings are first centred with the pool mean, z̃ = z − mean(z): ReLU features share a large
    positive offset that makes every raw cosine high (the centring lesson of METRICS.md); the pool is mostly
    clean, so its mean stands in for the clean mean. Scores per sample (higher = more suspicious):
      knn_density   z-score over the pool of ``knn_density``(z̃, k = 20) (cosine neighbours)
      spectral      ``spectral_signature``(z̃, pseudo-labels): per cluster |⟨z̃ − μ_c, v_c⟩| on the centred,
                    unnormalised embeddings, as Tran et al.; pseudo-labels from ``kmeans`` on z̃/‖z̃‖ (cosine
                    geometry), n_clusters default min(10, N // 20)
      ctrl_energy   ``ctrl_energy`` (RGB images only)
      grid_energy   ``grid_nyquist_energy`` (images only)
    Metrics: {score}_outlier_share (modified z-score > 3.5, Iglewicz & Hoaglin); with `poison` flags
    (1 = poisoned) also {score}_auroc, {score}_tpr_at_1pct_fpr, {score}_tpr_at_5pct_fpr and poison_share.
    Figures: the top_k samples per score (indices, scores, and poison flags when given), histograms, ROC curves
    (with poison), cluster sizes.
    """
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev)
    n = z.shape[0]
    pos = _checked(n, images, poison)
    warnings: list[str] = []
    scores: dict[str, np.ndarray] = {}
    zc = z - z.to(torch.float64).mean(dim=0).to(z.dtype)
    scores["knn_density"] = zscore(knn_density(zc, k, device=dev))
    progress(0.4, "k-NN density")
    kc = n_clusters if n_clusters is not None else max(1, min(DEFAULT_CLUSTERS, n // MIN_CLUSTER))
    clusters = kmeans(l2_normalize(zc), kc, seed=seed, device=dev)
    progress(0.6, f"k-means ({kc} clusters)")
    scores["spectral"] = spectral_signature(zc, clusters, device=dev)
    progress(0.75, "spectral signature")
    if images is not None:
        scores.update(_image_scores(np.asarray(images), warnings))
        progress(0.9, "image-level scores")
    top_k = max(0, min(top_k, n))
    metrics, figures = _ranking(scores, pos, top_k)
    figures["cluster_sizes"] = np.bincount(clusters, minlength=kc).tolist()
    if pos is not None:
        _against_poison(scores, pos, metrics, figures, warnings)
    variant = _variant(dev, z.shape, k, kc, seed, scores, top_k)
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _checked(n: int, images: np.ndarray | None, poison: np.ndarray | None) -> np.ndarray | None:
    """Refuse pools under 3 rows and images / poison flags of another length; the flags as booleans."""
    if n < 3:
        raise ValueError("the pool scan needs at least 3 rows")
    if images is not None and len(images) != n:
        raise ValueError(f"{len(images)} images for {n} embeddings")
    if poison is None:
        return None
    pos = np.asarray(poison).reshape(-1).astype(bool)
    if pos.size != n:
        raise ValueError(f"{pos.size} poison flags for {n} embeddings")
    return pos


def _image_scores(images: np.ndarray, warnings: list[str]) -> dict[str, np.ndarray]:
    """CTRL energy (RGB only; skipped with a warning otherwise) and grid Nyquist energy of the pool's images."""
    out = {}
    if images.ndim == 4 and images.shape[-1] == 3:
        out["ctrl_energy"] = ctrl_energy(images)
    else:
        warnings.append("CTRL energy needs RGB N×H×W×3 images: skipped")
    out["grid_energy"] = grid_nyquist_energy(images)
    return out


def _ranking(scores: dict[str, np.ndarray], pos: np.ndarray | None,
             top_k: int) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
    """Per score: the outlier share (metric), the top_k most suspicious samples and a histogram (figures)."""
    metrics: dict[str, float] = {}
    figures: dict[str, Any] = {"top_suspicious": {}, "histograms": {}}
    for name, sc in scores.items():
        metrics[f"{name}_outlier_share"] = float(np.mean(robust_z(sc) > ROBUST_Z_FLAG))
        order = np.argsort(-sc, kind="mergesort")[:top_k]
        entry: dict[str, Any] = {"indices": order.tolist(), "scores": sc[order].tolist()}
        if pos is not None:
            entry["poison"] = pos[order].astype(int).tolist()
        figures["top_suspicious"][name] = entry
        figures["histograms"][name] = histogram(sc, pos)
    return metrics, figures


def _against_poison(scores: dict[str, np.ndarray], pos: np.ndarray, metrics: dict[str, float],
                    figures: dict[str, Any], warnings: list[str]) -> None:  # fmt: skip
    """AUROC, TPR at TPR_AT_FPR and the ROC curve of every score against the ground-truth poison flags."""
    if pos.all() or not pos.any():
        warnings.append("poison flags are all equal: AUROC and TPR@FPR are undefined")
        return
    figures["roc"] = {}
    for name, sc in scores.items():
        metrics[f"{name}_auroc"] = auroc(sc, pos)
        for f in TPR_AT_FPR:
            metrics[f"{name}_tpr_at_{round(f * 100)}pct_fpr"] = tpr_at_fpr(sc, pos, f)
        figures["roc"][name] = roc_points(sc, pos)
    metrics["poison_share"] = float(pos.mean())


def _variant(dev: torch.device, shape: torch.Size, k: int, kc: int, seed: int, scores: dict[str, np.ndarray],
             top_k: int) -> dict[str, Any]:  # fmt: skip
    """What the pool scan ran, for the result's variant."""
    n = shape[0]
    return {
        "device": str(dev),
        "n": n,
        "dim": int(shape[1]),
        "centring": "embeddings centred with the pool mean before every score",
        "k": min(k, n - 1),
        "n_clusters": kc,
        "kmeans": f"k-means++ then Lloyd (≤ {KMEANS_ITERS} rounds) on the centred, L2-normalised embeddings, seed {seed}",
        "knn_density": "mean cosine to the k nearest other rows, z-scored over the pool (population std)",
        "spectral": "|<z − μ_c, v_c>| on the centred, unnormalised embeddings; v_c the top singular vector of the "
        "centred cluster (Tran et al. 2018)",
        "outlier_share": f"share with modified z-score (median/MAD·{ROBUST_Z_SCALE}) > {ROBUST_Z_FLAG}",
        "image_scores": sorted(nm for nm in scores if nm in ("ctrl_energy", "grid_energy")),
        "top_k": top_k,
        "tpr_at_fpr": list(TPR_AT_FPR),
        "similarity_dtype": "float32 (k-NN, k-means); float64 (spectral)",
    }
