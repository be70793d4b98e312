"""The linear probe protocol (METRICS.md, "Probe suite"): C chosen on a stratified holdout of train, then one
refit on all of train at that C, so the test split is touched once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.budget import MEMORY_BUDGET, rows_per_chunk
from worker.suites.common.device import resolve_device

from .inputs import as_features, as_labels
from .logreg import DEFAULT_C_GRID, LogRegFit, fit_logreg_sweep
from .splits import HOLDOUT_FRACTION, SPLIT_SEED, stratified_split


@dataclass
class LinearProbeResult:
    """A C sweep on a holdout of train, then the refit on all of train at the chosen C."""

    c_grid: np.ndarray
    holdout_top1: np.ndarray  # (n_C,) accuracy of each C on the holdout
    best_c: float
    best_index: int
    sweep: LogRegFit  # fitted on train minus holdout
    final: LogRegFit  # fitted on all of train at best_c
    n_holdout: int


def select_c(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = SPLIT_SEED,
    device: str | torch.device | None = None,
    memory_budget_bytes: int = MEMORY_BUDGET,
    progress: ProgressFn = no_progress,
    **fit_kwargs: Any,
) -> LinearProbeResult:
    """Choose C on a stratified `holdout_fraction` of train (``stratified_split`` with `seed`), refit on all
    of train. The best C has the highest holdout top-1 accuracy; ties go to the smaller C (stronger
    regularisation)."""
    y = as_labels(y_train)
    dev = resolve_device(device, x_train)
    xt = as_features(x_train, dev, fit_kwargs.get("dtype", torch.float32))
    fit_idx, hold_idx = stratified_split(y, holdout_fraction, seed)
    cs = np.sort(np.asarray(list(c_grid), dtype=np.float64))
    ti = torch.as_tensor(fit_idx, device=dev)
    sweep = fit_logreg_sweep(xt[ti], y[fit_idx], cs, device=dev, memory_budget_bytes=memory_budget_bytes,
                             progress=lambda f, m: progress(0.85 * f, "C sweep: " + m), **fit_kwargs)
    if hold_idx.size:
        pred = sweep.predict(xt[torch.as_tensor(hold_idx, device=dev)], memory_budget_bytes=memory_budget_bytes)
        hold_top1 = (sweep.classes[pred] == y[hold_idx][None, :]).mean(axis=1)
    else:  # every class has a single row: nothing to hold out, keep the middle of the grid
        hold_top1 = np.full(cs.size, np.nan)
    best = int(np.nanargmax(hold_top1)) if np.isfinite(hold_top1).any() else cs.size // 2
    final = fit_logreg_sweep(xt, y, [cs[best]], device=dev, memory_budget_bytes=memory_budget_bytes,
                             progress=lambda f, m: progress(0.85 + 0.15 * f, "refit: " + m), **fit_kwargs)
    return LinearProbeResult(c_grid=cs, holdout_top1=hold_top1, best_c=float(cs[best]), best_index=best,
                             sweep=sweep, final=final, n_holdout=int(hold_idx.size))


def chunked_logits(fit: LogRegFit, x: torch.Tensor, budget: int) -> torch.Tensor:
    """Logits (m, K) of the fit's first C, computed over row chunks of at most `budget` bytes."""
    k = fit.classes.size
    rows = rows_per_chunk(budget, 4 * (k + x.shape[1]))
    parts = [fit.logits(x[a : a + rows], 0) for a in range(0, x.shape[0], rows)]
    return torch.cat(parts, dim=0) if parts else torch.zeros((0, k), device=x.device)
