"""The pool scan: which samples of a possibly poisoned, unlabeled pool look planted? Per-sample k-NN density,
multi-scale local outlier factor, spectral signatures on k-means and on robust pseudo-classes, a SPECTRE-style
robust score, their label-free combination and, with the images, CTRL frequency and grid Nyquist energy; the
top-k suspicious samples, and AUROC / TPR at low FPR when ground-truth poison flags are given (docs/METRICS.md,
"Backdoor suite", sample-level scores).

Two geometries: where clean data are diffuse (a generic pool, the `shapes` fixtures) the poisons a backdoor
gathers are the densest samples, and k-NN density and the spectral signature find them; where clean images form
tight natural clusters (near-duplicate views of few scenes, as real unlabeled pools) the poisons are *not*
denser than clean samples (k-NN density falls to chance or below) and a pseudo-class can be all poisons. The
scores added for that regime assume nothing on how dense clean data are: `lof` (density against the
neighbours' density), `spectral_robust` (the signature on pseudo-classes too large to be all poisons) and
`spectre`; `combined` (combine.py) is the default ranking (benchmarks/RESULTS.md, "Backdoor pool scan on
natural, clustered pools").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import l2_normalize
from worker.suites.common.device import resolve_device
from worker.suites.common.roc import auroc, roc_points, tpr_at_fpr

from .combine import COMBINED_FROM, ROBUST_Z_SCALE, combine, robust_z, zscore
from .figures import histogram
from .image_scores import ctrl_energy, grid_nyquist_energy
from .knn import POOL_K, as_rows, knn_density
from .lof import LOF_BANK, multiscale_lof
from .spectral import KMEANS_ITERS, MIN_CLASS_SHARE, kmeans, merge_small_clusters, spectral_signature
from .spectre import SPECTRE_ALPHA, SPECTRE_DIMS, SPECTRE_TRIM, spectre_scores

DEFAULT_CLUSTERS = 10  # k-means pseudo-labels stand in for classes (CIFAR-10-like default); ≤ N / MIN_CLUSTER
MIN_CLUSTER = 20
ROBUST_Z_FLAG = 3.5  # Iglewicz & Hoaglin's modified z-score outlier rule
TPR_AT_FPR = (0.01, 0.05)
TOP_K = 50
DEFAULT_SCORE = "combined"  # the scan's default ranking
IMAGE_SCORES = ("ctrl_energy", "grid_energy")
POOL_SCORES = ("knn_density", "spectral", "ctrl_energy", "grid_energy", "lof", "spectral_robust", "spectre",
               "combined")  # fmt: skip


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
    clean, so its mean stands in for the clean mean. Scores per sample (higher = more suspicious; all label-free):
      knn_density      z-score over the pool of ``knn_density``(z̃, k = 20) (cosine neighbours)
      spectral         ``spectral_signature``(z̃, pseudo-labels): per cluster |⟨z̃ − μ_c, v_c⟩| on the centred,
                       unnormalised embeddings, as Tran et al.; pseudo-labels from ``kmeans`` on z̃/‖z̃‖ (cosine
                       geometry), n_clusters default min(10, N // 20)
      lof              ``multiscale_lof``(z̃): max over k of the modified z-score of log LOF_k (Breunig et al.
                       2000; cosine distance, k = 10, 20 and 2 %, 4 % of min(N, 2048) reference rows)
      spectral_robust  ``spectral_signature`` on robust pseudo-classes: the k-means clusters with those under
                       MIN_CLASS_SHARE (3 %) of the pool merged into the nearest (``merge_small_clusters``)
      spectre          ``spectre_scores``(z̃, robust pseudo-classes): SPECTRE's QUE score after robust whitening
                       (Hayase et al. 2021)
      combined         ``combine``: Σ log(1 + max(0, modified z)) over knn_density, lof, spectral_robust (the
                       default ranking; calibration in combine.py)
      ctrl_energy      ``ctrl_energy`` (RGB images only)
      grid_energy      ``grid_nyquist_energy`` (images only)
    Metrics: {score}_outlier_share (modified z-score > 3.5, Iglewicz & Hoaglin); with `poison` flags
    (1 = poisoned) also {score}_auroc, {score}_tpr_at_1pct_fpr, {score}_tpr_at_5pct_fpr and poison_share.
    Figures: the top_k samples per score (indices, scores, and poison flags when given), histograms, ROC curves
    (with poison), k-means and robust pseudo-class sizes, and the default score's name.
    """
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev)
    n = z.shape[0]
    pos = _checked(n, images, poison)
    warnings: list[str] = []
    scores: dict[str, np.ndarray] = {}
    zc = z - z.to(torch.float64).mean(dim=0).to(z.dtype)
    scores["knn_density"] = zscore(knn_density(zc, k, device=dev))
    progress(0.3, "k-NN density")
    scores["lof"], lof_k = multiscale_lof(zc, seed=seed, device=dev)
    progress(0.5, "local outlier factor")
    kc = n_clusters if n_clusters is not None else max(1, min(DEFAULT_CLUSTERS, n // MIN_CLUSTER))
    clusters = kmeans(l2_normalize(zc), kc, seed=seed, device=dev)
    progress(0.6, f"k-means ({kc} clusters)")
    scores["spectral"] = spectral_signature(zc, clusters, device=dev)
    robust = merge_small_clusters(zc, clusters, MIN_CLASS_SHARE * n, device=dev)
    same = len(np.unique(clusters)) == int(robust.max()) + 1  # nothing merged: the same partition
    scores["spectral_robust"] = scores["spectral"] if same else spectral_signature(zc, robust, device=dev)
    scores["spectre"] = spectre_scores(zc, robust, device=dev)
    scores["combined"] = combine(scores)
    progress(0.8, "spectral signatures, SPECTRE, combination")
    if images is not None:
        scores.update(_image_scores(np.asarray(images), warnings))
        progress(0.9, "image-level scores")
    top_k = max(0, min(top_k, n))
    metrics, figures = _ranking(scores, pos, top_k)
    figures["cluster_sizes"] = np.bincount(clusters, minlength=kc).tolist()
    figures["robust_cluster_sizes"] = np.bincount(robust).tolist()
    figures["default_score"] = DEFAULT_SCORE
    if pos is not None:
        _against_poison(scores, pos, metrics, figures, warnings)
    variant = _variant(dev, z.shape, k, kc, seed, scores, top_k, lof_k, int(robust.max()) + 1)
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
             top_k: int, lof_k: tuple[int, ...], n_robust: int) -> dict[str, Any]:  # fmt: skip
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
        "lof": f"max over k = {list(lof_k)} of the modified z-score of log LOF_k (Breunig et al. 2000), cosine "
        f"distance, reference bank of min(N, {LOF_BANK}) rows (seed {seed})",
        "spectral_robust": f"the spectral signature on robust pseudo-classes: k-means clusters under "
        f"{MIN_CLASS_SHARE:.0%} of the pool merged into the nearest by centroid cosine",
        "robust_clusters": n_robust,
        "spectre": f"QUE score (alpha {SPECTRE_ALPHA}) after robust whitening (C-steps, {SPECTRE_TRIM:.0%} trimmed) "
        f"in {SPECTRE_DIMS} PCA dimensions per robust pseudo-class (Hayase et al. 2021)",
        "combined": f"sum of log(1 + max(0, modified z-score)) over {list(COMBINED_FROM)}; the default ranking",
        "default_score": DEFAULT_SCORE,
        "outlier_share": f"share with modified z-score (median/MAD·{ROBUST_Z_SCALE}) > {ROBUST_Z_FLAG}",
        "image_scores": sorted(nm for nm in scores if nm in IMAGE_SCORES),
        "top_k": top_k,
        "tpr_at_fpr": list(TPR_AT_FPR),
        "similarity_dtype": "float32 (k-NN, LOF neighbours, k-means); float64 (LOF ratios, spectral, SPECTRE)",
    }
