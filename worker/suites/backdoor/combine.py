"""Putting the pool scan's scores on one scale, and the label-free combination of them (`combined`).

Each score s is first turned into a modified z-score (Iglewicz & Hoaglin 1993), robust_z(s) = (s − median) /
(1.4826 · MAD): "how many robust standard deviations above the pool's typical sample". The pool is mostly clean
(poisons a few percent at most), so median and MAD are the clean samples'; no labels, no clean reference set.

    combined(i) = Σ_{s ∈ COMBINED_FROM} log(1 + max(0, robust_z(s)_i))

Clipping at zero: a score that sees nothing, or sees the poisons as *less* suspicious than typical (k-NN density
in a pool of tight natural clusters ranks poisons below the median), adds nothing instead of cancelling a score
that sees them. The logarithm: one score's extreme tail (LOF of the members of a small clean cluster reaches
robust z ≈ 40 in a pool of tight clusters, where the MAD is small) cannot outrank samples that two scores agree
on; in the development runs on the natural-pool fixtures (3 encoder seeds × 2 poison draws) it raised the TPR
at 1 % FPR of weak cells (CTRL at 1 %: 0.49 → 0.69, the patch at 2 %: 0.89 → 0.96, `shapes` CTRL 0.83 → 0.97)
at the same AUROC as the plain sum of max(0, z). The members cover the two geometries a successful backdoor
leaves: a group denser than diffuse clean data (knn_density), a group or cloud whose density does not match its
clean neighbourhood (lof), and a direction that splits a pseudo-class (spectral_robust). Measured in
benchmarks/RESULTS.md, "Backdoor pool scan on natural, clustered pools".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ROBUST_Z_SCALE = 1.4826  # MAD → σ for a normal distribution
COMBINED_FROM = ("knn_density", "lof", "spectral_robust")  # the members of the default combination


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


def combine(scores: Mapping[str, np.ndarray], members: Sequence[str] = COMBINED_FROM) -> np.ndarray:
    """Σ over `members` of log(1 + max(0, robust_z(score))) (module docstring); members missing from `scores`
    are skipped, ValueError when none is there."""
    present = [m for m in members if m in scores]
    if not present:
        raise ValueError(f"none of the combination's scores {list(members)} was computed")
    return np.sum([np.log1p(np.clip(robust_z(scores[m]), 0.0, None)) for m in present], axis=0)
