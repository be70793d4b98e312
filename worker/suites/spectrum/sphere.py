"""Geometry of the normalised rows on the sphere: uniformity (Wang & Isola 2020) and SimSiam's collapse std."""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.arrays import check_finite, l2_normalize, to_tensor
from worker.suites.common.device import resolve_device
from worker.suites.spectrum.gram import GRAM_DTYPE, row_gram_blocks

# Uniformity (Wang & Isola, ICML 2020): t = 2, on at most 10 000 rows.
UNIFORMITY_MAX_SAMPLES = 10_000
UNIFORMITY_T = 2.0


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
    2ẑ_i·ẑ_j, 0); only i < j blocks are formed (float64, ``gram.row_gram_blocks``), never N×N.
    """
    z = _rows(embeddings, device, "uniformity")
    return uniformity_of_rows(z, t, progress)


def uniformity_of_rows(z: torch.Tensor, t: float, progress: ProgressFn = no_progress) -> float:
    """``uniformity`` of a checked (m ≥ 2)×D tensor, on its device."""
    m = z.shape[0]
    zh = l2_normalize(z.to(GRAM_DTYPE))
    sq = (zh * zh).sum(dim=1)  # 1, or 0 for a zero row
    total = torch.zeros((), dtype=GRAM_DTYPE, device=z.device)
    for a, b, e in row_gram_blocks(zh):
        # rows a..b against columns a..m; e = exp(−t·max(‖ẑ_i‖² + ‖ẑ_j‖² − 2 ẑ_i·ẑ_j, 0)), in place
        e.mul_(-2.0).add_(sq[None, a:]).add_(sq[a:b, None]).clamp_(min=0.0).mul_(-t).exp_()
        diag_block = e[:, : b - a]
        # pairs i < j: everything right of the diagonal block, plus the diagonal block's strict upper
        # triangle = (block sum − trace) / 2 by symmetry
        total += e[:, b - a :].sum() + (diag_block.sum() - diag_block.diagonal().sum()) * 0.5
        progress(b / m, f"uniformity: {b}/{m} rows")
    pairs = m * (m - 1) / 2
    return float(torch.log(total / pairs))


def collapse_std(embeddings: np.ndarray | torch.Tensor, *, device: str | torch.device | None = None) -> float:
    """Collapse indicator of SimSiam (Chen & He, CVPR 2021, arXiv 2011.10566), as lightly's
    ``std_of_l2_normalized``:  mean_d std_n(ẑ_{n,d}),  ẑ = z / max(‖z‖, 1e-12).

    std is the unbiased sample std (torch.std's default, correction = 1, which lightly uses). ≈ 1/√D for
    an isotropic Gaussian, 0 for collapse to one vector. ``run_spectrum`` computes the same quantity in its
    single streaming pass (``gram.GramMoments.collapse_std``).
    """
    z = _rows(embeddings, device, "collapse_std")
    return float(l2_normalize(z).std(dim=0, correction=1).mean())


def _rows(embeddings: np.ndarray | torch.Tensor, device: str | torch.device | None, what: str) -> torch.Tensor:
    """The rows as a finite float64 (m ≥ 2)×D tensor (a copy) on the resolved device; ValueError otherwise."""
    z = to_tensor(embeddings, resolve_device(device, embeddings), GRAM_DTYPE, copy=True)
    check_finite(z)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"{what} needs an (m ≥ 2)×D matrix, got shape {tuple(z.shape)}")
    return z
