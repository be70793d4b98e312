"""A. Invariance curves over the fixed transforms g of a family (docs/METRICS.md, "Equivariance suite").

The ranked summary is the relative invariance (scores.relative_invariance; Bouchacourt et al. 2021):
rel_g = 1 − mean_i ‖f(gx_i) − f(x_i)‖² / mean_{i≠j} ‖f(gx_j) − f(x_i)‖², the change g makes to an image's
features against the distance to another image's transformed features. It reads the features as returned (no
normalisation): offsets cancel in the differences, a global scale in the ratio. `relative` is its curve (mean
over the g of each strength; 1 at strength 0) and `relative_mean` the mean over the strengths > 0 — one number
per family, each strength weighted equally, without the free point at strength 0 an area would add.

Kept for the figures and for continuity (not ranked: a shared offset or the features' statistics decide them):
cos_s = mean over images and over the g of strength s of cos(f(x), f(gx)); corrected_s = mean of
(1 − cos(z, z_shuf)) − (1 − cos(z, z_g)), z = f(x), z_g = f(gx), z_shuf = z_g with its dimensions permuted
(one seeded permutation per image). Curves start at strength 0 (cos 1; corrected 1 − cos(z, z_shuf)).
`auc` / `corrected_auc`: trapezoidal area under each curve over strength / max strength ∈ [0, 1] (1 =
perfectly invariant for the cosine). The corrected score's ceiling is its strength-0 value 1 − cos(z, z_shuf)
(small for features with a large shared offset, ≈ 1 for centred ones), so it does not rank encoders by
itself; `normalized_auc` is the AUC of the corrected curve divided by its strength-0 value (1 = invariant,
0 = as far as a dimension-shuffled copy) — an addition to METRICS.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from worker.suites.equivariance.families import Family
from worker.suites.equivariance.scores import COS_EPS, cosine, curve_auc, relative_invariance


def shuffle_permutation(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """One permutation of the D dimensions per image: argsort(torch.rand(n, D, Generator(seed)))."""
    g = torch.Generator().manual_seed(seed)
    return torch.argsort(torch.rand(n, dim, generator=g), dim=1).to(device)


def _at_strength(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], perm: torch.Tensor, s: float
                 ) -> tuple[float, float]:  # fmt: skip
    """(mean cosine, mean corrected score) over the elements of strength s."""
    cs, cr = [], []
    for (st, _), z in zip(fam.elements, zs, strict=True):
        if st != s:
            continue
        c = cosine(z0, z)
        c_shuf = cosine(z0, torch.gather(z, 1, perm))
        cs.append(float(c.mean()))
        cr.append(float(((1.0 - c_shuf) - (1.0 - c)).mean()))
    return float(np.mean(cs)), float(np.mean(cr))


def _relative_curve(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], strengths: list[float]
                    ) -> tuple[list[float], list[float]]:  # fmt: skip
    """(relative invariance per element g, its mean per strength with 1.0 at strength 0)."""
    per_element = [relative_invariance(z0, z) for z in zs]
    curve = [1.0]
    for s in strengths:
        vals = [v for (st, _), v in zip(fam.elements, per_element, strict=True) if st == s]
        curve.append(float(np.mean(vals)))
    return per_element, curve


def invariance_curve(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], perm: torch.Tensor) -> dict[str, Any]:
    """A: relative invariance, mean cosine and shuffled-baseline corrected score per strength (strength 0
    included), with their summaries."""
    z0_shuf = torch.gather(z0, 1, perm)
    strengths = sorted({s for s, _ in fam.elements})
    cos_curve, cor_curve = [1.0], [float((1.0 - cosine(z0, z0_shuf)).mean())]
    for s in strengths:
        c, cr = _at_strength(fam, z0, zs, perm, s)
        cos_curve.append(c)
        cor_curve.append(cr)
    per_element = [float(cosine(z0, z).mean()) for z in zs]
    rel_element, rel_curve = _relative_curve(fam, z0, zs, strengths)
    xs = [0.0, *strengths]
    gap = cor_curve[0]
    norm_curve = [c / gap for c in cor_curve] if gap > COS_EPS else [math.nan] * len(cor_curve)
    return {
        "strength": xs,
        "unit": fam.unit,
        "relative": rel_curve,
        "per_element_relative": rel_element,
        "relative_mean": float(np.mean(rel_curve[1:])),
        "mean_cosine": cos_curve,
        "corrected": cor_curve,
        "normalized": norm_curve,
        "per_element_cosine": per_element,
        "auc": curve_auc(xs, cos_curve),
        "corrected_auc": curve_auc(xs, cor_curve),
        "normalized_auc": curve_auc(xs, norm_curve) if gap > COS_EPS else math.nan,
    }
