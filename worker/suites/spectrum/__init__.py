"""Spectrum suite: label-free metrics of an embedding matrix (RankMe and kin).

Z is the N×D embedding matrix, σ_k its singular values (descending), λ_k the eigenvalues of its covariance
(centred, divided by N − 1). Everything is computed from one pass over the rows: the D×D Gram matrix is
accumulated in float64 chunk by chunk (a memory-mapped file of any N fits in bounded memory), then a
symmetric eigensolver (LAPACK dsyevd, ``_eigvalsh``) gives σ_k = √max(λ_k(ZᵀZ), 0). Nested (Matryoshka)
prefixes Z[:, :k] reuse the Gram matrix's leading k×k block, so they cost no second pass over the data. The
contract is shared/METRICS.md, "Spectrum suite".

Numerics (float64 Gram):
  * eigvalsh is accurate to ~ k·eps·λ_max in absolute terms, so an exactly rank-r matrix would show
    D − r "singular values" of ~1e-8·σ_max noise, which shifts RankMe by ~1e-3 at large D. Eigenvalues
    below the floor  λ_floor = k·finfo(float64).eps·λ_max  are set to exactly 0 (σ_floor = √λ_floor is
    reported in the variant). σ below σ_max·√(k·eps) (≈ 1.4e-6·σ_max at k = 8192) is therefore not
    resolved. For generic data this moves RankMe by < 1e-6 relative; for an exactly low-rank matrix stored
    in float32 (hundreds of σ of pure rounding noise ≈ 1e-7·σ_max) svdvals' RankMe differs by up to ~3e-6.
  * Centring is done without a second pass with the shifted-data identity
        (Z − 1μᵀ)ᵀ(Z − 1μᵀ) = (Z − 1cᵀ)ᵀ(Z − 1cᵀ) − N (μ − c)(μ − c)ᵀ,
    i.e. ZᵀZ − Nμμᵀ with a pivot c (c = 0 gives the textbook form). The pivot is the first row plus the
    mean deviation of the first PIVOT_ROWS rows from it, so a large shared offset (ReLU features) does not
    cancel catastrophically, and identical rows give an exactly zero centred Gram. The raw ZᵀZ is rebuilt from
    the shifted sums. The centred floor is k·eps·(λ_max(centred) + ‖Σ(z − c)‖²/N), an upper bound of
    the largest eigenvalue of the shifted Gram whose rounding the centred eigenvalues inherit.
  * Spectra have min(N, k) values, like ``torch.linalg.svdvals`` on the N×k matrix: RankMe's +1e-7 would
    otherwise count the D − N structural zeros of a wide matrix.

Degenerate spectra (documented, tested): an all-zero spectrum (e.g. the centred spectrum of N identical
rows) has RankMe 0, NESum 0, stable rank 0 and condition 0; α-ReQ needs ≥ ALPHA_MIN_POINTS positive
covariance eigenvalues in the fit range and is otherwise left out of the metrics with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh as _scipy_eigh
from scipy.linalg.blas import dsyrk as _dsyrk

from worker.suites.base import ProgressFn, SuiteResult, no_progress, resolve_device
from worker.suites.rows import prefetched, read_rows, take_rows

# --- protocol constants -------------------------------------------------------------------------------

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
# Uniformity (Wang & Isola, ICML 2020): t = 2, on at most 10 000 rows.
UNIFORMITY_MAX_SAMPLES = 10_000
UNIFORMITY_T = 2.0
# LiDAR (Thilak et al., 2023, arXiv 2312.04000): δ regularises Σ_w, ε is added after normalising λ.
LIDAR_DELTA = 1e-4
LIDAR_EPS = 1e-7
# Matryoshka / nested prefixes: D/2, D/4, ... down to this many dims.
MATRYOSHKA_MIN_DIM = 16
# Implementation constants.
GRAM_DTYPE = torch.float64
PIVOT_ROWS = 1024  # the Gram pass shifts rows by the mean of the first rows (module docstring)
CPU_BLAS = True  # CPU float64 Gram pass and eigenvalues through numpy + SciPy (OpenBLAS dsyrk, dsyevd)
FLOAT64_EPS = float(np.finfo(np.float64).eps)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default: z / max(‖z‖, eps)
PAIRWISE_BLOCK_ELEMENTS = 1 << 24  # float64 elements (128 MiB) per block of the pairwise similarity matrix

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


# --- metric functions on a spectrum -----------------------------------------------------------------


def rankme(singular_values: Sequence[float] | np.ndarray | torch.Tensor, eps: float = RANKME_EPS) -> float:
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


def alpha_req(
    eigenvalues: Sequence[float] | np.ndarray | torch.Tensor, fit_range: tuple[int, int] = ALPHA_FIT_RANGE
) -> AlphaFit | None:
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


def nesum(eigenvalues: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """NESum, normalised eigenvalue sum (He & Ozay, ICML 2022): Σ_i λ_i / λ_1 over covariance eigenvalues.

    0 when the covariance is zero (all rows identical).
    """
    lam = _as_float64(eigenvalues)
    if lam.size == 0 or lam.max() <= 0:
        return 0.0
    return float(lam.sum() / lam.max())


def stable_rank(singular_values: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Stable rank ‖Z‖_F² / ‖Z‖_2² = Σ_k σ_k² / σ_1² (raw σ; Rudelson & Vershynin 2007). 0 for Z = 0."""
    s = _as_float64(singular_values)
    if s.size == 0 or s.max() <= 0:
        return 0.0
    return float(np.sum(s**2) / s.max() ** 2)


def condition(singular_values: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Inverse condition number σ_min>0 / σ_max ∈ [0, 1] (raw σ).

    σ_min>0 is the smallest σ above the eigenvalue floor (σ at or below it are exact zeros after
    ``gram_spectrum``). 0 for Z = 0.
    """
    s = _as_float64(singular_values)
    pos = s[s > 0]
    if pos.size == 0:
        return 0.0
    return float(pos.min() / pos.max())


# --- metric functions on rows -----------------------------------------------------------------------


def uniformity(
    embeddings: np.ndarray | torch.Tensor,
    *,
    t: float = UNIFORMITY_T,
    device: str | torch.device | None = None,
    progress: ProgressFn = no_progress,
) -> float:
    """Uniformity loss (Wang & Isola, ICML 2020, arXiv 2005.10242):

        log mean_{i≠j} exp(−t ‖ẑ_i − ẑ_j‖²),   ẑ = z / max(‖z‖, 1e-12),   t = 2.

    In [−4t, 0]: 0 when all rows coincide, lower = more uniform on the sphere. The rows given are all used
    (``run_spectrum`` subsamples to UNIFORMITY_MAX_SAMPLES first). ‖ẑ_i − ẑ_j‖² = max(‖ẑ_i‖² + ‖ẑ_j‖² −
    2ẑ_i·ẑ_j, 0); only i < j blocks are formed (float64, ≤ PAIRWISE_BLOCK_ELEMENTS per block), never N×N.
    """
    dev = resolve_device(device, embeddings)
    z = _rows_to_tensor(embeddings, dev)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"uniformity needs an (m ≥ 2)×D matrix, got shape {tuple(z.shape)}")
    return _uniformity_tensor(z, t, progress)


def collapse_std(embeddings: np.ndarray | torch.Tensor, *, device: str | torch.device | None = None) -> float:
    """Collapse indicator of SimSiam (Chen & He, CVPR 2021, arXiv 2011.10566), as lightly's
    ``std_of_l2_normalized``:  mean_d std_n(ẑ_{n,d}),  ẑ = z / max(‖z‖, 1e-12).

    std is the unbiased sample std (torch.std's default, correction = 1, which lightly uses). ≈ 1/√D for
    an isotropic Gaussian, 0 for collapse to one vector. ``run_spectrum`` computes the same quantity in its
    single streaming pass (Chan et al. pairwise mean/M2 merge).
    """
    dev = resolve_device(device, embeddings)
    z = _rows_to_tensor(embeddings, dev)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"collapse_std needs an (m ≥ 2)×D matrix, got shape {tuple(z.shape)}")
    zh = z / z.norm(dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
    return float(zh.std(dim=0, correction=1).mean())


def lidar(
    views: np.ndarray | torch.Tensor,
    *,
    delta: float = LIDAR_DELTA,
    eps: float = LIDAR_EPS,
    device: str | torch.device | None = None,
    chunk_samples: int = 1024,
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
    v = views if isinstance(views, torch.Tensor) else torch.from_numpy(_native(np.asarray(views)))
    if v.ndim != 3:
        raise ValueError(f"lidar needs views of shape (n, q, D), got {tuple(v.shape)}")
    n, q, d = v.shape
    if n < 2 or q < 2:
        raise ValueError(f"lidar needs n ≥ 2 samples and q ≥ 2 views each, got n={n}, q={q}")
    means = torch.empty((n, d), dtype=GRAM_DTYPE, device=dev)
    scatter_w = torch.zeros((d, d), dtype=GRAM_DTYPE, device=dev)
    for a in range(0, n, max(1, chunk_samples)):
        b = min(n, a + max(1, chunk_samples))
        x = v[a:b].to(device=dev, dtype=GRAM_DTYPE)
        _check_finite(x)
        mu_x = x.mean(dim=1)
        means[a:b] = mu_x
        dev_x = (x - mu_x[:, None, :]).reshape(-1, d)
        scatter_w.addmm_(dev_x.T, dev_x)
    centred = means - means.mean(dim=0)
    sigma_b = centred.T @ centred / (n - 1)
    sigma_w = scatter_w / (n * (q - 1)) + delta * torch.eye(d, dtype=GRAM_DTYPE, device=dev)
    w, vecs = torch.linalg.eigh(_sym(sigma_w))
    inv_sqrt = (vecs * w.clamp_min(torch.finfo(GRAM_DTYPE).tiny).rsqrt()) @ vecs.T
    lam = torch.linalg.eigvalsh(_sym(inv_sqrt @ sigma_b @ inv_sqrt)).clamp_min(0.0)
    return rankme(lam.cpu().numpy()[::-1], eps=eps)


# --- the Gram pass ------------------------------------------------------------------------------------


@dataclass
class _GramMoments:
    """Sums over the rows of one pass: shifted Gram, shifted column sum, and per-prefix normalised moments.

    Only the lower triangles of the Gram matrices are meaningful (BLAS dsyrk fills one); ``_eigvalsh`` reads
    only that triangle."""

    n: int
    pivot: torch.Tensor  # c (D,)
    gram_shifted: torch.Tensor  # Σ (z − c)(z − c)ᵀ (D, D)
    sum_shifted: torch.Tensor  # Σ (z − c) (D,)
    # k -> (mean, M2) of ẑ^(k) = z[:k] / ‖z[:k]‖ over the rows (Chan et al. merge), for collapse_std
    l2n: dict[int, tuple[torch.Tensor, torch.Tensor]]

    def raw_gram(self, k: int) -> torch.Tensor:
        """ZᵀZ[:k, :k] = G_c + c sᵀ + s cᵀ + N c cᵀ (G_c, s the shifted sums)."""
        c, s = self.pivot[:k], self.sum_shifted[:k]
        v = s + (0.5 * self.n) * c  # c sᵀ + s cᵀ + N c cᵀ = c vᵀ + v cᵀ: one rank-2 update
        return torch.addmm(self.gram_shifted[:k, :k], torch.stack([c, v], dim=1), torch.stack([v, c]))

    def centered_gram(self, k: int) -> torch.Tensor:
        """ZcᵀZc[:k, :k] = G_c − s sᵀ / N."""
        s = self.sum_shifted[:k]
        return torch.addr(self.gram_shifted[:k, :k], s, s, alpha=-1.0 / self.n)

    def collapse_std(self, k: int) -> float:
        _, m2 = self.l2n[k]
        return float((m2 / (self.n - 1)).clamp_min(0.0).sqrt().mean())


def _accumulate(
    embeddings: Any,
    rows: np.ndarray | None,
    device: torch.device,
    chunk_rows: int,
    prefixes: Sequence[int],
    progress: ProgressFn,
    progress_span: tuple[float, float] = (0.0, 1.0),
) -> _GramMoments:
    n_total, d = _shape(embeddings)
    gram = torch.zeros((d, d), dtype=GRAM_DTYPE, device=device)
    colsum = torch.zeros(d, dtype=GRAM_DTYPE, device=device)
    l2n: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pivot: torch.Tensor | None = None
    n = 0
    n_use = n_total if rows is None else len(rows)
    lo, hi = progress_span
    buffer: np.ndarray | None = None
    for chunk in _iter_chunks(embeddings, rows, device, chunk_rows):
        if pivot is None:
            pivot = _pivot(chunk)
            if _uses_syrk(gram):
                buffer = np.empty((chunk.shape[0], d), dtype=np.float64)
        if prefixes:
            x64 = chunk.to(GRAM_DTYPE)
            sq_cum = torch.cumsum(x64 * x64, dim=1)
            for k in prefixes:
                zh = x64[:, :k] / sq_cum[:, k - 1 : k].sqrt().clamp_min(NORMALIZE_EPS)
                l2n[k] = _merge_moments(l2n.get(k), n, zh)
        _add_shifted_chunk(gram, colsum, chunk, pivot, buffer)
        n += chunk.shape[0]
        progress(lo + (hi - lo) * n / max(n_use, 1), f"Gram matrix: {n}/{n_use} rows")
    if pivot is None:
        raise ValueError("no rows to evaluate")
    return _GramMoments(n=n, pivot=pivot, gram_shifted=gram, sum_shifted=colsum, l2n=l2n)


def _uses_syrk(gram: torch.Tensor) -> bool:
    return CPU_BLAS and gram.device.type == "cpu" and gram.dtype == torch.float64


def _pivot(chunk: torch.Tensor) -> torch.Tensor:
    """The shift c (float64): the mean of the first PIVOT_ROWS rows, as first row + mean deviation from it so
    that it is exactly that row when the rows coincide (then Z − c is exactly 0, not rounding noise)."""
    head = chunk[:PIVOT_ROWS].to(GRAM_DTYPE)
    first = head[0]
    return first + (head - first).mean(dim=0)


def _add_shifted_chunk(
    gram: torch.Tensor, colsum: torch.Tensor, chunk: torch.Tensor, pivot: torch.Tensor, buffer: np.ndarray | None
) -> None:
    """gram += xᵀx and colsum += Σ_rows x with x = chunk − pivot in float64; raises on NaN/Inf in the chunk.

    On the CPU x is formed in a reused float64 buffer by numpy (one pass, cast included) and added by BLAS
    dsyrk, the symmetric rank-k update: half the flops of a GEMM, filling only the lower triangle (all that
    ``_eigvalsh`` reads). numpy and OpenBLAS only, no torch op in the loop: torch's OpenMP threads keep
    spinning after each op and slowed the next dsyrk by 10-40 % on 2 cores. Elsewhere (GPU) torch sub + addmm_.
    NaN/Inf anywhere in the chunk reaches its float64 column sums (finite inputs cannot overflow there), so
    one check on D numbers replaces a pass over the chunk."""
    if buffer is not None:
        x = buffer[: chunk.shape[0]]
        np.subtract(chunk.numpy(), pivot.numpy(), out=x)
        part = x.sum(axis=0)
        if not np.isfinite(part).all():
            raise ValueError(NON_FINITE)
        acc = colsum.numpy()
        acc += part
        # gram is C-ordered, so gram.T is the Fortran-ordered matrix dsyrk updates in place; its "upper"
        # triangle is gram's lower one. x.T (Fortran-ordered, D × rows) times its transpose is xᵀx.
        _dsyrk(1.0, x.T, beta=1.0, c=gram.numpy().T, trans=0, lower=0, overwrite_c=1)
        return
    x = chunk.to(GRAM_DTYPE) - pivot
    part = x.sum(dim=0)
    _check_finite(part)
    colsum += part
    gram.addmm_(x.T, x)


def _eigvalsh(mat: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of the symmetric matrix whose lower triangle `mat` holds (the upper one is never
    read; `mat` may be overwritten). On the CPU SciPy's dsyevd (OpenBLAS, as the Gram pass: no second thread
    pool, no MKL start-up on the first call), handed the Fortran-ordered transpose so nothing is copied;
    torch.linalg.eigvalsh elsewhere. For D = 2 048 right after the Gram pass both took 0.37-0.42 s here;
    OpenBLAS's two-stage dsyevd_2stage was no faster (0.43-0.53 s)."""
    if CPU_BLAS and mat.device.type == "cpu" and mat.dtype == torch.float64 and mat.is_contiguous():
        values = _scipy_eigh(mat.numpy().T, lower=False, eigvals_only=True, driver="evd", overwrite_a=True,
                             check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(values))
    return torch.linalg.eigvalsh(mat, UPLO="L")


def _merge_moments(
    acc: tuple[torch.Tensor, torch.Tensor] | None, n_acc: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan, Golub & LeVeque pairwise update of (mean, M2) with a chunk x (b×k)."""
    b = x.shape[0]
    mean_b = x.mean(dim=0)
    m2_b = ((x - mean_b) ** 2).sum(dim=0)
    if acc is None:
        return mean_b, m2_b
    mean, m2 = acc
    tot = n_acc + b
    delta = mean_b - mean
    return mean + delta * (b / tot), m2 + m2_b + delta**2 * (n_acc * b / tot)


@dataclass
class _Spectra:
    sigma: np.ndarray  # raw σ, descending, min(N, k) values, floored
    eig_centered: np.ndarray  # eigenvalues of ZcᵀZc, descending, min(N, k) values, floored
    lam_floor: float
    lam_floor_centered: float


def _spectra(m: _GramMoments, k: int, *, centered: bool = True) -> _Spectra:
    keep = min(m.n, k)
    raw = _eigvalsh(m.raw_gram(k)).flip(0)
    lam_max = max(float(raw[0]), 0.0)
    floor = k * FLOAT64_EPS * lam_max
    sigma = _floor(raw, floor)[:keep].sqrt()
    if not centered:
        return _Spectra(sigma.cpu().numpy(), np.zeros(0), floor, math.nan)
    cen = _eigvalsh(m.centered_gram(k)).flip(0)
    s = m.sum_shifted[:k]
    floor_c = k * FLOAT64_EPS * (max(float(cen[0]), 0.0) + float(s @ s) / m.n)
    eig_c = _floor(cen, floor_c)[:keep]
    return _Spectra(sigma.cpu().numpy(), eig_c.cpu().numpy(), floor, floor_c)


def _floor(eigs: torch.Tensor, floor: float) -> torch.Tensor:
    """Eigenvalues below the floor (and negative rounding noise) become exact zeros."""
    return torch.where(eigs > floor, eigs, torch.zeros_like(eigs))


def gram_spectrum(
    embeddings: np.ndarray | torch.Tensor,
    *,
    rows: np.ndarray | None = None,
    center: bool = False,
    device: str | torch.device | None = None,
    chunk_rows: int = 8192,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Singular values (descending, float64 numpy, min(N, D) of them) of Z, or of Z − mean(Z) when `center`.

    The D×D Gram matrix ZᵀZ is accumulated in float64 over chunks of `chunk_rows` rows (a np.memmap of any
    floating dtype, float16 included, is read chunk by chunk, never whole), then torch.linalg.eigvalsh;
    σ = √λ with λ below the floor k·eps·λ_max set to 0 (module docstring). Centring uses the shifted-data
    form of ZᵀZ − Nμμᵀ in the same pass. `rows`: optional (sorted) row indices to use instead of all rows.
    """
    dev = resolve_device(device, embeddings)
    rows = _check_rows(rows, _shape(embeddings)[0])
    m = _accumulate(embeddings, rows, dev, chunk_rows, (), progress)
    d = _shape(embeddings)[1]
    sp = _spectra(m, d, centered=center)
    if center:
        return np.sqrt(sp.eig_centered)
    return sp.sigma


# --- the suite ----------------------------------------------------------------------------------------


def matryoshka_dims(d: int, min_dim: int = MATRYOSHKA_MIN_DIM) -> list[int]:
    """Nested prefix sizes D/2, D/4, ... (integer halving) that are ≥ `min_dim`; D itself excluded."""
    dims = []
    k = d // 2
    while k >= min_dim:
        dims.append(k)
        k //= 2
    return dims


def subsample_rows(n: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Sorted `np.random.default_rng(seed).choice(n, max_rows, replace=False)` when n > max_rows, else None."""
    if n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def run_spectrum(
    embeddings: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    max_rows: int = RANKME_MAX_ROWS,
    seed: int = 0,
    chunk_rows: int = 8192,
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
    n_total, d = _shape(embeddings)
    if n_total < 2 or d < 1:
        raise ValueError(f"spectrum needs at least 2 rows and 1 column, got shape ({n_total}, {d})")
    if max_rows < 2 or uniformity_max_rows < 2:
        raise ValueError("max_rows and uniformity_max_rows must be ≥ 2")
    dev = resolve_device(device, embeddings)
    rows = subsample_rows(n_total, max_rows, seed)
    n_used = n_total if rows is None else len(rows)
    dims = [d, *matryoshka_dims(d)] if matryoshka else [d]

    moments = _accumulate(embeddings, rows, dev, chunk_rows, dims, progress, (0.0, 0.6))

    u_rows = subsample_rows(n_total, uniformity_max_rows, seed)
    u = torch.empty((n_total if u_rows is None else len(u_rows), d), dtype=GRAM_DTYPE, device=dev)
    filled = 0
    for chunk in _iter_chunks(embeddings, u_rows, dev, chunk_rows):
        u[filled : filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    _check_finite(u)
    progress(0.65, f"uniformity: {filled} rows loaded")

    warnings: list[str] = []
    if n_used < d:
        warnings.append(
            f"N = {n_used} rows < D = {d} dims: RankMe is capped at min(N, D) = {n_used}; "
            "compare only runs evaluated on the same N."
        )

    per_dim: dict[int, dict[str, float | None]] = {}
    full: dict[str, Any] = {}
    for j, k in enumerate(dims):
        sp = _spectra(moments, k)
        lam = sp.eig_centered / (moments.n - 1)  # covariance eigenvalues
        fit = alpha_req(lam)
        vals: dict[str, float | None] = {
            "rankme": rankme(sp.sigma),
            "rankme_centered": rankme(np.sqrt(sp.eig_centered)),
            "alpha_req": None if fit is None else fit.alpha,
            "alpha_req_r2": None if fit is None else fit.r2,
            "nesum": nesum(lam),
            "stable_rank": stable_rank(sp.sigma),
            "condition": condition(sp.sigma),
            "uniformity": _uniformity_tensor(u[:, :k], UNIFORMITY_T),
            "collapse_std": moments.collapse_std(k),
        }
        per_dim[k] = vals
        if k == d:
            full = {"spectra": sp, "lam": lam, "fit": fit}
        progress(0.65 + 0.35 * (j + 1) / len(dims), f"metrics at d = {k}")

    metrics: dict[str, float] = {}
    for k, vals in per_dim.items():
        suffix = "" if k == d else f"@d{k}"
        for key, value in vals.items():
            if value is not None:
                metrics[key + suffix] = float(value)

    sp, lam, fit = full["spectra"], full["lam"], full["fit"]
    if fit is None:
        warnings.append(
            f"alpha_req not computed: it needs ≥ {ALPHA_MIN_POINTS} positive covariance eigenvalues at ranks "
            f"{ALPHA_FIT_RANGE[0]}..{ALPHA_FIT_RANGE[1]}; this spectrum has {int(np.count_nonzero(lam > 0))}."
        )
    elif fit.last < ALPHA_FIT_RANGE[1]:
        warnings.append(
            f"alpha_req fitted on ranks {fit.first}..{fit.last} only (fewer than {ALPHA_FIT_RANGE[1]} positive "
            "covariance eigenvalues): not comparable with the standard range."
        )

    eig_c = sp.eig_centered
    total_c = float(eig_c.sum())
    figures: dict[str, Any] = {
        "singular_values": _to_list(sp.sigma),
        "explained_variance_cumulative": _to_list(np.cumsum(eig_c) / total_c if total_c > 0 else eig_c),
        "alpha_fit": _alpha_figure(lam, fit),
        "matryoshka": {
            "dims": list(dims),
            **{key: [per_dim[k][key] for k in dims] for key in METRIC_KEYS},
        },
    }
    variant: dict[str, Any] = {
        "rankme": f"raw uncentered σ, eps {RANKME_EPS:g} after normalisation",
        "rankme_centered": "σ of Z − mean(Z), same formula",
        "spectrum": "eigvalsh of the float64 Gram matrix, σ = √λ; min(N, D) values",
        "gram_dtype": "float64",
        "device": str(dev),
        "n_rows_total": n_total,
        "n_rows_used": n_used,
        "subsampled": rows is not None,
        "subsample_seed": seed,
        "max_rows": max_rows,
        "dim": d,
        "sigma_floor": math.sqrt(sp.lam_floor),
        "sigma_floor_centered": math.sqrt(sp.lam_floor_centered),
        "eig_floor_rule": "λ < k·eps64·λ_max → 0",
        "covariance": "centred Gram / (N − 1)",
        "alpha_fit_range": list(ALPHA_FIT_RANGE),
        "alpha_fit": "least squares log λ_i = c − α log i, weights 1/i, 1-based ranks (reptrix np.arange(5, 100))",
        "uniformity_t": UNIFORMITY_T,
        "uniformity_rows": int(u.shape[0]),
        "uniformity_subsampled": u_rows is not None,
        "collapse_std": "mean over dims of the unbiased std (torch.std default, lightly) of z/‖z‖",
        "matryoshka_dims": dims[1:],
        "chunk_rows": chunk_rows,
    }
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _alpha_figure(lam: np.ndarray, fit: AlphaFit | None) -> dict[str, Any]:
    pos = lam[lam > 0]
    i = np.arange(1, pos.size + 1, dtype=np.float64)
    log_i = np.log(i)
    return {
        "log_i": _to_list(log_i),
        "log_lambda": _to_list(np.log(pos)),
        "fit_line": None if fit is None else _to_list(fit.intercept - fit.alpha * log_i),
        "alpha": None if fit is None else fit.alpha,
        "r2": None if fit is None else fit.r2,
        "range": None if fit is None else [fit.first, fit.last],
    }


# --- pairwise -----------------------------------------------------------------------------------------


def _uniformity_tensor(z: torch.Tensor, t: float, progress: ProgressFn = no_progress) -> float:
    m = z.shape[0]
    zh = z.to(GRAM_DTYPE)
    zh = zh / zh.norm(dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
    sq = (zh * zh).sum(dim=1)  # 1, or 0 for a zero row
    block = max(1, min(m, PAIRWISE_BLOCK_ELEMENTS // max(m, 1)))
    total = torch.zeros((), dtype=GRAM_DTYPE, device=z.device)
    for a in range(0, m, block):
        b = min(m, a + block)
        # rows a..b against columns a..m; e = exp(−t·max(‖ẑ_i‖² + ‖ẑ_j‖² − 2 ẑ_i·ẑ_j, 0)), in place
        e = zh[a:b] @ zh[a:].T
        e.mul_(-2.0).add_(sq[None, a:]).add_(sq[a:b, None]).clamp_(min=0.0).mul_(-t).exp_()
        diag_block = e[:, : b - a]
        # pairs i < j: everything right of the diagonal block, plus the diagonal block's strict upper
        # triangle = (block sum − trace) / 2 by symmetry
        total += e[:, b - a :].sum() + (diag_block.sum() - diag_block.diagonal().sum()) * 0.5
        progress(b / m, f"uniformity: {b}/{m} rows")
    pairs = m * (m - 1) / 2
    return float(torch.log(total / pairs))


# --- helpers ------------------------------------------------------------------------------------------


def _as_float64(values: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def _to_list(a: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float64)]


def _sym(a: torch.Tensor) -> torch.Tensor:
    return (a + a.T) * 0.5


def _shape(embeddings: Any) -> tuple[int, int]:
    shape = tuple(embeddings.shape)
    if len(shape) != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) matrix, got shape {shape}")
    dtype = embeddings.dtype
    if isinstance(embeddings, torch.Tensor):
        ok = dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool)
    else:
        ok = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    if not ok:
        raise TypeError(f"embeddings must be real numbers, got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def _check_rows(rows: np.ndarray | None, n: int) -> np.ndarray | None:
    if rows is None:
        return None
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError("rows must be a 1-D array of integer row indices")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must lie in [0, {n})")
    return rows


def _native(arr: np.ndarray) -> np.ndarray:
    """An array torch.from_numpy accepts: native byte order, a dtype torch knows (else float64)."""
    if arr.dtype in (np.float16, np.float32, np.float64) and arr.dtype.isnative:
        return arr
    return arr.astype(np.float64)


NON_FINITE = "embeddings contain NaN or infinite values"
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _check_finite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(NON_FINITE)


def _rows_to_tensor(data: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        x = data.detach().to(device=device, dtype=GRAM_DTYPE)
    else:
        x = torch.from_numpy(_native(np.array(data, copy=True))).to(device=device, dtype=GRAM_DTYPE)
    _check_finite(x)
    return x


def _iter_chunks(
    embeddings: Any, rows: np.ndarray | None, device: torch.device, chunk_rows: int
) -> Iterator[torch.Tensor]:
    """Chunks of at most `chunk_rows` rows on `device`, in the data's own floating dtype (float64 for others),
    unchecked. A chunk may be a view of the caller's array or of a reused read buffer, valid until the next
    one is requested: callers copy it (and check finiteness), never write to it. Reads only those rows from a
    memmap, the next chunk while the current one is being computed on."""
    n = _shape(embeddings)[0] if rows is None else len(rows)
    step = max(1, int(chunk_rows))
    bounds = [(a, min(n, a + step)) for a in range(0, n, step)]
    if isinstance(embeddings, torch.Tensor):
        for a, b in bounds:
            sel = slice(a, b) if rows is None else torch.as_tensor(rows[a:b], device=embeddings.device)
            x = embeddings[sel].detach().to(device=device)
            yield x if x.dtype in _NUMPY_FLOATS else x.to(GRAM_DTYPE)  # bfloat16, integers: no numpy view
        return
    if rows is None and not isinstance(embeddings, np.memmap) and device.type == "cpu":
        for a, b in bounds:
            yield _view_tensor(np.ascontiguousarray(_native(embeddings[a:b])))
        return
    # Copy to RAM (pread for a memmap: RSS stays one chunk) into two reused buffers — page-locked when the
    # device is a GPU, so the host-to-device copy runs at full speed — read one chunk ahead of the compute.
    buffers = _read_buffers(embeddings, min(step, n), device)
    reads = ((lambda a=a, b=b, buf=buffers[i % 2][: b - a]: read_rows(embeddings, a, b, buf)) if rows is None
             else (lambda a=a, b=b, buf=buffers[i % 2][: b - a]: take_rows(embeddings, rows[a:b], buf))
             for i, (a, b) in enumerate(bounds))
    for part in prefetched(reads):
        yield torch.from_numpy(_native(part)).to(device=device)


def _view_tensor(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without its warning for read-only arrays (np.load's, say): chunks are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _read_buffers(embeddings: np.ndarray, rows: int, device: torch.device) -> list[np.ndarray]:
    d, dtype = embeddings.shape[1], embeddings.dtype
    if device.type == "cuda" and dtype in (np.float16, np.float32, np.float64) and dtype.isnative:
        return [torch.empty((rows, d), dtype=getattr(torch, dtype.name), pin_memory=True).numpy()
                for _ in range(2)]
    return [np.empty((rows, d), dtype=dtype) for _ in range(2)]
