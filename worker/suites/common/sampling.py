"""Seeded row choices: a sorted random subsample, and a stratified train/test split.

Both draw from ``np.random.default_rng(seed)`` only, so a seed gives the same rows on every machine.
"""

from __future__ import annotations

import math

import numpy as np

ROUNDINGS = ("half_up", "half_even")


def subsample_rows(n: int, max_rows: int, seed: int, *, size: int | None = None) -> np.ndarray | None:
    """None when n ≤ max_rows (use every row); else the sorted
    ``np.random.default_rng(seed).choice(n, size, replace=False)`` with size = `size` or max_rows."""
    if n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_rows if size is None else size, replace=False))


def stratified_split(
    labels: np.ndarray,
    test_fraction: float,
    seed: int = 0,
    *,
    rounding: str = "half_up",
    both_sides: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted int64, stratified by label.

    One generator ``np.random.default_rng(seed)``; per class c (sorted) with n_c rows, the rows are permuted
    with ``rng.permutation`` and the first t_c go to test, t_c = test_fraction·n_c rounded
      half_up   -- floor(x + 0.5)
      half_even -- Python's round(x) (ties to even)
    and, with `both_sides`, clipped to [1, n_c − 1] so that every class with ≥ 2 rows is on both sides (a class
    of one row stays in train). A one-row permutation draws nothing, so both settings consume the generator
    identically. ValueError unless 0 < test_fraction < 1.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    y = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_c = idx.size
        x = test_fraction * n_c
        t_c = int(math.floor(x + 0.5)) if rounding == "half_up" else int(round(x))
        if both_sides:
            if n_c < 2:
                continue
            t_c = min(max(t_c, 1), n_c - 1)
        test_parts.append(rng.permutation(idx)[:t_c])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64) if test_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test
