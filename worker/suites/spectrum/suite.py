"""The spectrum suite: every metric of docs/METRICS.md, "Spectrum suite", from one pass over the rows, and its
entry point for the registry (repscope.suites)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import check_finite, matrix_shape, to_list
from worker.suites.common.device import resolve_device
from worker.suites.common.sampling import subsample_rows
from worker.suites.spectrum.chunks import CHUNK_ROWS, iter_chunks
from worker.suites.spectrum.gram import GRAM_DTYPE, GramMoments, Spectra, accumulate, spectra
from worker.suites.spectrum.metrics import (
    ALPHA_FIT_RANGE,
    ALPHA_MIN_POINTS,
    METRIC_KEYS,
    RANKME_EPS,
    RANKME_MAX_ROWS,
    AlphaFit,
    alpha_req,
    condition,
    nesum,
    rankme,
    stable_rank,
)
from worker.suites.spectrum.sphere import UNIFORMITY_MAX_SAMPLES, UNIFORMITY_T, uniformity_of_rows
from worker.suites.spectrum.views import LIDAR_DELTA, LIDAR_EPS, lidar

# Matryoshka / nested prefixes: D/2, D/4, ... down to this many dims.
MATRYOSHKA_MIN_DIM = 16
GRAM_SPAN = (0.0, 0.6)  # progress fractions of the Gram pass
UNIFORMITY_LOADED = 0.65  # progress once uniformity's rows are in memory; the metrics per dim share the rest


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """Spectrum metrics; LiDAR too when the file carries q augmented views per row (checkpoint path)."""
    result = run_spectrum(arrays.embeddings, device=device, progress=progress, **params)
    if arrays.views is not None:
        result.metrics["lidar"] = lidar(arrays.views, device=device)
        n, q, _ = arrays.views.shape
        result.variant["lidar"] = (f"Thilak et al. 2023 on {n} samples x {q} augmented views, "
                                   f"delta {LIDAR_DELTA:g}, eps {LIDAR_EPS:g}")
    return result


def matryoshka_dims(d: int, min_dim: int = MATRYOSHKA_MIN_DIM) -> list[int]:
    """Nested prefix sizes D/2, D/4, ... (integer halving) that are ≥ `min_dim`; D itself excluded."""
    dims = []
    k = d // 2
    while k >= min_dim:
        dims.append(k)
        k //= 2
    return dims


def run_spectrum(
    embeddings: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    max_rows: int = RANKME_MAX_ROWS,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
    uniformity_max_rows: int = UNIFORMITY_MAX_SAMPLES,
    matryoshka: bool = True,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Every spectrum metric of METRICS.md on an N×D embedding matrix (ndarray, np.memmap or tensor).

    Rows: when N > max_rows, the sorted rows of default_rng(seed).choice(N, max_rows, replace=False) are
    used for the Gram pass (all metrics but uniformity, collapse_std included); uniformity applies the same
    rule with `uniformity_max_rows` to all N rows. Metrics at prefixes D/2, D/4, ... ≥ 16 are keyed
    ``{metric}@d{k}`` and come from the Gram matrix's leading k×k block (collapse_std's per-prefix moments
    are gathered in the same pass; uniformity re-normalises its in-memory rows per prefix).
    """
    n_total, d = matrix_shape(embeddings, real=True)
    if n_total < 2 or d < 1:
        raise ValueError(f"spectrum needs at least 2 rows and 1 column, got shape ({n_total}, {d})")
    if max_rows < 2 or uniformity_max_rows < 2:
        raise ValueError("max_rows and uniformity_max_rows must be ≥ 2")
    dev = resolve_device(device, embeddings)
    rows = subsample_rows(n_total, max_rows, seed)
    n_used = n_total if rows is None else len(rows)
    dims = [d, *matryoshka_dims(d)] if matryoshka else [d]

    moments = accumulate(embeddings, rows, dev, chunk_rows, dims, progress, GRAM_SPAN)
    u_rows = subsample_rows(n_total, uniformity_max_rows, seed)
    u = _load_rows(embeddings, u_rows, dev, chunk_rows, d)
    progress(UNIFORMITY_LOADED, f"uniformity: {u.shape[0]} rows loaded")

    warnings: list[str] = []
    if n_used < d:
        warnings.append(
            f"N = {n_used} rows < D = {d} dims: RankMe is capped at min(N, D) = {n_used}; "
            "compare only runs evaluated on the same N."
        )
    per_dim, fits, (sp, lam, fit) = _metrics_per_dim(moments, u, dims, progress)
    metrics = {key + ("" if k == d else f"@d{k}"): float(value)
               for k, vals in per_dim.items() for key, value in vals.items() if value is not None}
    warnings.extend(_alpha_warnings(lam, fit))
    warnings.extend(_alpha_prefix_warnings(fits, d))
    variant: dict[str, Any] = {
        **_spectrum_variant(sp, dev, n_total, n_used, rows is not None, seed, max_rows, d),
        "uniformity_t": UNIFORMITY_T,
        "uniformity_rows": int(u.shape[0]),
        "uniformity_subsampled": u_rows is not None,
        "collapse_std": "mean over dims of the unbiased std (torch.std default, lightly) of z/‖z‖",
        "matryoshka_dims": dims[1:],
        "alpha_fit_ranges": {("alpha_req" if k == d else f"alpha_req@d{k}"):
                             None if f is None else [f.first, f.last] for k, f in fits.items()},
        "chunk_rows": chunk_rows,
    }
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=_figures(sp, lam, fit, dims, per_dim), variant=variant,
                       warnings=warnings)


def _load_rows(
    embeddings: Any, rows: np.ndarray | None, dev: torch.device, chunk_rows: int, d: int
) -> torch.Tensor:
    """The chosen rows (all when None) as one finite float64 tensor on `dev`, for uniformity."""
    u = torch.empty((matrix_shape(embeddings)[0] if rows is None else len(rows), d), dtype=GRAM_DTYPE,
                    device=dev)
    filled = 0
    for chunk in iter_chunks(embeddings, rows, dev, chunk_rows):
        u[filled : filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    check_finite(u)
    return u


def _metrics_per_dim(
    moments: GramMoments, u: torch.Tensor, dims: list[int], progress: ProgressFn
) -> tuple[dict[int, dict[str, float | None]], dict[int, AlphaFit | None],
           tuple[Spectra, np.ndarray, AlphaFit | None]]:
    """{k: {metric: value or None}} for every prefix k in `dims`, {k: α fit or None}, and (spectra, covariance
    eigenvalues, α fit) at the full dimension dims[0]."""
    per_dim: dict[int, dict[str, float | None]] = {}
    fits: dict[int, AlphaFit | None] = {}
    full: tuple[Spectra, np.ndarray, AlphaFit | None] | None = None
    lo = UNIFORMITY_LOADED
    for j, k in enumerate(dims):
        sp = spectra(moments, k)
        lam = sp.eig_centered / (moments.n - 1)  # covariance eigenvalues
        fit = alpha_req(lam)
        fits[k] = fit
        per_dim[k] = {
            "rankme": rankme(sp.sigma),
            "rankme_centered": rankme(np.sqrt(sp.eig_centered)),
            "alpha_req": None if fit is None else fit.alpha,
            "alpha_req_r2": None if fit is None else fit.r2,
            "nesum": nesum(lam),
            "stable_rank": stable_rank(sp.sigma),
            "condition": condition(sp.sigma),
            "uniformity": uniformity_of_rows(u[:, :k], UNIFORMITY_T),
            "collapse_std": moments.collapse_std(k),
        }
        if k == dims[0]:
            full = (sp, lam, fit)
        progress(lo + (1.0 - lo) * (j + 1) / len(dims), f"metrics at d = {k}")
    assert full is not None
    return per_dim, fits, full


def _alpha_warnings(lam: np.ndarray, fit: AlphaFit | None) -> list[str]:
    """Why α-ReQ is missing, or fitted on a shorter range than the standard one."""
    if fit is None:
        return [
            f"alpha_req not computed: it needs ≥ {ALPHA_MIN_POINTS} positive covariance eigenvalues at ranks "
            f"{ALPHA_FIT_RANGE[0]}..{ALPHA_FIT_RANGE[1]}; this spectrum has {int(np.count_nonzero(lam > 0))}."
        ]
    if fit.last < ALPHA_FIT_RANGE[1]:
        return [
            f"alpha_req fitted on ranks {fit.first}..{fit.last} only (fewer than {ALPHA_FIT_RANGE[1]} positive "
            "covariance eigenvalues): not comparable with the standard range."
        ]
    return []


def _alpha_prefix_warnings(fits: dict[int, AlphaFit | None], d: int) -> list[str]:
    """The Matryoshka prefixes whose α-ReQ is fitted on fewer ranks than ALPHA_FIT_RANGE (a k×k covariance has
    k eigenvalues: every k < 100 truncates it), or not fitted at all. Their values are kept: the range at a
    given k is the same for every run with enough rows (``alpha_fit_ranges`` in the variant says which)."""
    short = {k: f for k, f in fits.items() if k != d and f is not None and f.last < ALPHA_FIT_RANGE[1]}
    missing = [k for k, f in fits.items() if k != d and f is None]
    out = []
    if short:
        used = ", ".join(f"alpha_req@d{k} on ranks {f.first}..{f.last}" for k, f in short.items())
        out.append(f"α-ReQ fitted on truncated rank ranges ({used}) instead of {ALPHA_FIT_RANGE[0]}.."
                   f"{ALPHA_FIT_RANGE[1]}: compare these only with the same prefix dimension and range")
    if missing:
        out.append(f"alpha_req@d{{k}} not computed for k = {missing}: fewer than {ALPHA_MIN_POINTS} positive "
                   f"covariance eigenvalues at ranks {ALPHA_FIT_RANGE[0]}..{ALPHA_FIT_RANGE[1]}")
    return out


def _spectrum_variant(
    sp: Spectra, dev: torch.device, n_total: int, n_used: int, subsampled: bool, seed: int, max_rows: int, d: int
) -> dict[str, Any]:
    """The variant entries of the Gram pass: formulas, rows used, floors, α fit range."""
    return {
        "rankme": f"raw uncentered σ, eps {RANKME_EPS:g} after normalisation",
        "rankme_centered": "σ of Z − mean(Z), same formula",
        "spectrum": "eigvalsh of the float64 Gram matrix, σ = √λ; min(N, D) values",
        "gram_dtype": "float64",
        "device": str(dev),
        "n_rows_total": n_total,
        "n_rows_used": n_used,
        "subsampled": subsampled,
        "subsample_seed": seed,
        "max_rows": max_rows,
        "dim": d,
        "sigma_floor": math.sqrt(sp.lam_floor),
        "sigma_floor_centered": math.sqrt(sp.lam_floor_centered),
        "eig_floor_rule": "λ < k·eps64·λ_max → 0",
        "covariance": "centred Gram / (N − 1)",
        "alpha_fit_range": list(ALPHA_FIT_RANGE),
        "alpha_fit": "least squares log λ_i = c − α log i, weights 1/i, 1-based ranks (reptrix "
                     "np.arange(5, 100)); ranks beyond the positive eigenvalues (min(N − 1, k) at prefix k) "
                     "are cut: the range used per key is alpha_fit_ranges; truncated ones are warned, kept",
    }


def _figures(
    sp: Spectra, lam: np.ndarray, fit: AlphaFit | None, dims: list[int], per_dim: dict[int, dict[str, float | None]]
) -> dict[str, Any]:
    """Singular values, cumulative explained variance, the α fit and the Matryoshka curves."""
    eig_c = sp.eig_centered
    total_c = float(eig_c.sum())
    return {
        "singular_values": to_list(sp.sigma),
        "explained_variance_cumulative": to_list(np.cumsum(eig_c) / total_c if total_c > 0 else eig_c),
        "alpha_fit": _alpha_figure(lam, fit),
        "matryoshka": {
            "dims": list(dims),
            **{key: [per_dim[k][key] for k in dims] for key in METRIC_KEYS},
        },
    }


def _alpha_figure(lam: np.ndarray, fit: AlphaFit | None) -> dict[str, Any]:
    """log λ_i against log i (positive λ), and the fitted line over the same i."""
    pos = lam[lam > 0]
    i = np.arange(1, pos.size + 1, dtype=np.float64)
    log_i = np.log(i)
    return {
        "log_i": to_list(log_i),
        "log_lambda": to_list(np.log(pos)),
        "fit_line": None if fit is None else to_list(fit.intercept - fit.alpha * log_i),
        "alpha": None if fit is None else fit.alpha,
        "r2": None if fit is None else fit.r2,
        "range": None if fit is None else [fit.first, fit.last],
    }
