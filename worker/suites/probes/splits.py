"""Train / test splits of the probe protocol (METRICS.md, "Probe suite"): the uploaded split when given,
else a stratified 80/20 one; C is chosen on a stratified 10 % holdout of train."""

from __future__ import annotations

import numpy as np

from worker.suites.common import sampling

from .inputs import as_labels

TEST_FRACTION = 0.2
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0


def stratified_split(
    labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted int64: per class, round-half-up(test_fraction·n_c) rows to test,
    clipped so that every class with ≥ 2 rows is on both sides (``common.sampling.stratified_split``)."""
    return sampling.stratified_split(as_labels(labels), test_fraction, seed)


def resolve_split(
    labels: np.ndarray, split: np.ndarray | None = None, *, seed: int = SPLIT_SEED,
    test_fraction: float = TEST_FRACTION,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train_idx, test_idx, source): the uploaded split (0 train / 1 test) if given, else stratified."""
    y = as_labels(labels)
    if split is None:
        tr, te = stratified_split(y, test_fraction, seed)
        return tr, te, f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%}, seed {seed}"
    s = np.asarray(split).ravel()
    if s.size != y.size:
        raise ValueError(f"split has {s.size} entries for {y.size} rows")
    bad = ~np.isin(s, (0, 1))
    if bad.any():
        raise ValueError(f"split must hold 0 (train) or 1 (test) only; found {np.unique(s[bad])[:5].tolist()}")
    tr, te = np.flatnonzero(s == 0).astype(np.int64), np.flatnonzero(s == 1).astype(np.int64)
    if tr.size == 0 or te.size == 0:
        raise ValueError(f"the uploaded split has {tr.size} train and {te.size} test rows; both must be > 0")
    return tr, te, "uploaded"
