"""Gram matrices in bounded memory: the D×D feature Gram in one streaming pass, and its eigenvalues.

Z is the N×D embedding matrix. The Gram matrix ZᵀZ is accumulated in float64 chunk by chunk (a memory-mapped
file of any N fits in bounded memory), then a symmetric eigensolver (LAPACK dsyevd, ``eigvalsh``) gives
σ_k = √max(λ_k(ZᵀZ), 0). Nested (Matryoshka) prefixes Z[:, :k] reuse the Gram matrix's leading k×k block,
so they cost no second pass over the data. ``row_gram_blocks`` forms the N×N Gram of rows (uniformity) a
block of rows at a time, never whole. The contract is docs/METRICS.md, "Spectrum suite".

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
  * collapse_std's per-prefix moments of z/‖z‖ ride on the same pass (Chan, Golub & LeVeque pairwise
    mean / M2 merge).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh as _scipy_eigh
from scipy.linalg.blas import dsyrk as _dsyrk

from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.arrays import NON_FINITE, NORMALIZE_EPS, check_finite, matrix_shape
from worker.suites.common.budget import rows_per_chunk
from worker.suites.common.device import resolve_device
from worker.suites.spectrum.chunks import CHUNK_ROWS, check_rows, iter_chunks
from worker.suites.spectrum.metrics import (
    FLOAT64_EPS,
    METRIC_KEYS,  # noqa: F401  (the unit tests read it off this module)
)

GRAM_DTYPE = torch.float64
PIVOT_ROWS = 1024  # the Gram pass shifts rows by the mean of the first rows (module docstring)
CPU_BLAS = True  # CPU float64 Gram pass and eigenvalues through numpy + SciPy (OpenBLAS dsyrk, dsyevd)
PAIRWISE_BLOCK_ELEMENTS = 1 << 24  # float64 elements (128 MiB) per block of the N×N row Gram matrix

Moments = tuple[torch.Tensor, torch.Tensor]  # (mean, M2) over the rows so far


@dataclass
class GramMoments:
    """Sums over the rows of one pass: shifted Gram, shifted column sum, and per-prefix normalised moments.

    Only the lower triangles of the Gram matrices are meaningful (BLAS dsyrk fills one); ``eigvalsh`` reads
    only that triangle."""

    n: int
    pivot: torch.Tensor  # c (D,)
    gram_shifted: torch.Tensor  # Σ (z − c)(z − c)ᵀ (D, D)
    sum_shifted: torch.Tensor  # Σ (z − c) (D,)
    # k -> (mean, M2) of ẑ^(k) = z[:k] / ‖z[:k]‖ over the rows (Chan et al. merge), for collapse_std
    l2n: dict[int, Moments]

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
        """mean_d std_n(ẑ^(k)_{n,d}) with the unbiased std (see ``sphere.collapse_std``)."""
        _, m2 = self.l2n[k]
        return float((m2 / (self.n - 1)).clamp_min(0.0).sqrt().mean())


def accumulate(
    embeddings: Any,
    rows: np.ndarray | None,
    device: torch.device,
    chunk_rows: int,
    prefixes: Sequence[int],
    progress: ProgressFn,
    progress_span: tuple[float, float] = (0.0, 1.0),
) -> GramMoments:
    """One pass over the rows (all, or `rows`): the shifted Gram and column sum, and for each k in `prefixes`
    the moments of z[:k] / ‖z[:k]‖. ValueError on NaN/Inf or when there is no row."""
    n_total, d = matrix_shape(embeddings, real=True)
    gram = torch.zeros((d, d), dtype=GRAM_DTYPE, device=device)
    colsum = torch.zeros(d, dtype=GRAM_DTYPE, device=device)
    l2n: dict[int, Moments] = {}
    pivot: torch.Tensor | None = None
    n = 0
    n_use = n_total if rows is None else len(rows)
    lo, hi = progress_span
    buffer: np.ndarray | None = None
    for chunk in iter_chunks(embeddings, rows, device, chunk_rows):
        if pivot is None:
            pivot = _pivot(chunk)
            if _uses_syrk(gram):
                buffer = np.empty((chunk.shape[0], d), dtype=np.float64)
        if prefixes:
            _add_prefix_moments(l2n, n, chunk, prefixes)
        _add_shifted_chunk(gram, colsum, chunk, pivot, buffer)
        n += chunk.shape[0]
        progress(lo + (hi - lo) * n / max(n_use, 1), f"Gram matrix: {n}/{n_use} rows")
    if pivot is None:
        raise ValueError("no rows to evaluate")
    return GramMoments(n=n, pivot=pivot, gram_shifted=gram, sum_shifted=colsum, l2n=l2n)


def _uses_syrk(gram: torch.Tensor) -> bool:
    return CPU_BLAS and gram.device.type == "cpu" and gram.dtype == torch.float64


def _pivot(chunk: torch.Tensor) -> torch.Tensor:
    """The shift c (float64): the mean of the first PIVOT_ROWS rows, as first row + mean deviation from it so
    that it is exactly that row when the rows coincide (then Z − c is exactly 0, not rounding noise)."""
    head = chunk[:PIVOT_ROWS].to(GRAM_DTYPE)
    first = head[0]
    return first + (head - first).mean(dim=0)


def _add_prefix_moments(l2n: dict[int, Moments], n_acc: int, chunk: torch.Tensor, prefixes: Sequence[int]) -> None:
    """Merge the chunk's z[:k] / max(‖z[:k]‖, 1e-12) into l2n[k] for every prefix k (norms from one cumsum)."""
    x64 = chunk.to(GRAM_DTYPE)
    sq_cum = torch.cumsum(x64 * x64, dim=1)
    for k in prefixes:
        zh = x64[:, :k] / sq_cum[:, k - 1 : k].sqrt().clamp_min(NORMALIZE_EPS)
        l2n[k] = _merge_moments(l2n.get(k), n_acc, zh)


def _merge_moments(acc: Moments | None, n_acc: int, x: torch.Tensor) -> Moments:
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


def _add_shifted_chunk(
    gram: torch.Tensor, colsum: torch.Tensor, chunk: torch.Tensor, pivot: torch.Tensor, buffer: np.ndarray | None
) -> None:
    """gram += xᵀx and colsum += Σ_rows x with x = chunk − pivot in float64; raises on NaN/Inf in the chunk.

    NaN/Inf anywhere in the chunk reaches its float64 column sums (finite inputs cannot overflow there), so
    one check on D numbers replaces a pass over the chunk. On the CPU ``_add_syrk``; elsewhere (GPU) torch
    sub + addmm_."""
    if buffer is not None:
        _add_syrk(gram, colsum, chunk, pivot, buffer)
        return
    x = chunk.to(GRAM_DTYPE) - pivot
    part = x.sum(dim=0)
    check_finite(part)
    colsum += part
    gram.addmm_(x.T, x)


def _add_syrk(
    gram: torch.Tensor, colsum: torch.Tensor, chunk: torch.Tensor, pivot: torch.Tensor, buffer: np.ndarray
) -> None:
    """The CPU step: x is formed in a reused float64 buffer by numpy (one pass, cast included) and added by
    BLAS dsyrk, the symmetric rank-k update: half the flops of a GEMM, filling only the lower triangle (all
    that ``eigvalsh`` reads). numpy and OpenBLAS only, no torch op in the loop: torch's OpenMP threads keep
    spinning after each op and slow the next dsyrk down."""
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


def eigvalsh(mat: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of the symmetric matrix whose lower triangle `mat` holds (the upper one is never
    read; `mat` may be overwritten). On the CPU SciPy's dsyevd (OpenBLAS, as the Gram pass: no second thread
    pool, no MKL start-up on the first call), handed the Fortran-ordered transpose so nothing is copied;
    torch.linalg.eigvalsh elsewhere."""
    if CPU_BLAS and mat.device.type == "cpu" and mat.dtype == torch.float64 and mat.is_contiguous():
        values = _scipy_eigh(mat.numpy().T, lower=False, eigvals_only=True, driver="evd", overwrite_a=True,
                             check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(values))
    return torch.linalg.eigvalsh(mat, UPLO="L")


@dataclass
class Spectra:
    sigma: np.ndarray  # raw σ, descending, min(N, k) values, floored
    eig_centered: np.ndarray  # eigenvalues of ZcᵀZc, descending, min(N, k) values, floored
    lam_floor: float
    lam_floor_centered: float


def spectra(m: GramMoments, k: int, *, centered: bool = True) -> Spectra:
    """Floored raw σ and centred Gram eigenvalues of the prefix Z[:, :k] (module docstring: the floors)."""
    keep = min(m.n, k)
    raw = eigvalsh(m.raw_gram(k)).flip(0)
    lam_max = max(float(raw[0]), 0.0)
    floor = k * FLOAT64_EPS * lam_max
    sigma = _floor(raw, floor)[:keep].sqrt()
    if not centered:
        return Spectra(sigma.cpu().numpy(), np.zeros(0), floor, math.nan)
    cen = eigvalsh(m.centered_gram(k)).flip(0)
    s = m.sum_shifted[:k]
    floor_c = k * FLOAT64_EPS * (max(float(cen[0]), 0.0) + float(s @ s) / m.n)
    eig_c = _floor(cen, floor_c)[:keep]
    return Spectra(sigma.cpu().numpy(), eig_c.cpu().numpy(), floor, floor_c)


def _floor(eigs: torch.Tensor, floor: float) -> torch.Tensor:
    """Eigenvalues below the floor (and negative rounding noise) become exact zeros."""
    return torch.where(eigs > floor, eigs, torch.zeros_like(eigs))


def gram_spectrum(
    embeddings: np.ndarray | torch.Tensor,
    *,
    rows: np.ndarray | None = None,
    center: bool = False,
    device: str | torch.device | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Singular values (descending, float64 numpy, min(N, D) of them) of Z, or of Z − mean(Z) when `center`.

    The D×D Gram matrix ZᵀZ is accumulated in float64 over chunks of `chunk_rows` rows (a np.memmap of any
    floating dtype, float16 included, is read chunk by chunk, never whole), then a symmetric eigensolver;
    σ = √λ with λ below the floor k·eps·λ_max set to 0 (module docstring). Centring uses the shifted-data
    form of ZᵀZ − Nμμᵀ in the same pass. `rows`: optional (sorted) row indices to use instead of all rows.
    """
    dev = resolve_device(device, embeddings)
    rows = check_rows(rows, matrix_shape(embeddings, real=True)[0])
    m = accumulate(embeddings, rows, dev, chunk_rows, (), progress)
    d = matrix_shape(embeddings, real=True)[1]
    sp = spectra(m, d, centered=center)
    if center:
        return np.sqrt(sp.eig_centered)
    return sp.sigma


def row_gram_blocks(zh: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(a, b, zh[a:b] @ zh[a:]ᵀ) for consecutive blocks of rows a..b: the upper block triangle of the N×N row
    Gram matrix, never whole. A block holds at most max(N, PAIRWISE_BLOCK_ELEMENTS) entries; the caller may
    overwrite it."""
    m = zh.shape[0]
    block = min(m, rows_per_chunk(PAIRWISE_BLOCK_ELEMENTS, m))
    for a in range(0, m, block):
        b = min(m, a + block)
        yield a, b, zh[a:b] @ zh[a:].T
