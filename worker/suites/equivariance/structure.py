"""C. Equivariance structure: a linear map per fixed transform g (Lenc & Vedaldi, CVPR 2015), scored by
relative error and by retrieval (SIE, Garrido et al. ICML 2023, eval_MRR_Hk.py).

Per g, ridge M_g (with intercept) is fitted on train images, f(gx) ≈ M_g f(x) (α picked on the train
holdout); on test images `relerr` = mean over g of Σ‖f(gx) − M_g f(x)‖² / Σ‖f(gx) − mean_test f(gx)‖²;
`mrr`, `hit{1,5,10}`: rank of f(gx) among the family's candidates {f(g′x)} of the same image (identity
included) by cosine to M_g f(x); ties count as a uniformly random order (expected reciprocal rank).
`relerr_identity`, `mrr_identity`: the same with M_g = I (the invariance reference). Families have 2–13
candidates, so Hit@k ≥ number of candidates is 1 by construction; `chance_mrr` is each family's chance level.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from worker.suites.equivariance.families import Family, element_label
from worker.suites.equivariance.heads import RidgeSolver, pick_alpha, standardize
from worker.suites.equivariance.scores import COS_EPS, chance_mrr, nanmean, retrieval_scores
from worker.suites.equivariance.split import Split


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(COS_EPS)


def _retrieval(query: torch.Tensor, cands_n: torch.Tensor, target: np.ndarray) -> dict[str, float]:
    """MRR / Hit@k of candidate `target` among cands_n [m, G, D] (unit rows) by cosine to query [m, D]."""
    sim = torch.einsum("md,mgd->mg", _unit(query, 1), cands_n)
    return retrieval_scores(sim.cpu().numpy(), target)


def _summary(rel: list[float], rel_id: list[float], learned: list[dict[str, float]], ident: list[dict[str, float]]
             ) -> dict[str, float]:  # fmt: skip
    return {
        "relerr": nanmean(rel),
        "relerr_identity": nanmean(rel_id),
        **{key: float(np.mean([r[key] for r in learned])) for key in learned[0]},
        **{f"{key}_identity": float(np.mean([r[key] for r in ident])) for key in ident[0]},
    }


def structure_scores(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], split: Split) -> dict[str, Any]:
    """C: ridge M_g per fixed g, relative error and retrieval among the family's views of the same image."""
    x = standardize(z0, split.train)
    sel = RidgeSolver(x[split.fit])
    val_proj = sel.project(x[split.val])
    full = RidgeSolver(x[split.train])
    test_proj = full.project(x[split.test])
    cands_n = _unit(torch.stack([z0[split.test]] + [z[split.test] for z in zs], dim=1).double(), 2)  # [m, G, D]
    z0_test = z0[split.test].double()
    rel, rel_id, alphas, learned, ident = [], [], [], [], []
    for j, z in enumerate(zs):
        y_fit, y_val = z[split.fit].double(), z[split.val].double()

        def score(pred: torch.Tensor, y_val: torch.Tensor = y_val) -> float:
            return -float(((pred - y_val) ** 2).sum())

        alpha = pick_alpha(sel, y_fit, val_proj, score, len(split.fit))
        pred = full.predict(z[split.train].double(), alpha, test_proj)
        yt = z[split.test].double()
        denom = float(((yt - yt.mean(dim=0)) ** 2).sum())
        denom = denom if denom > 0 else math.nan
        rel.append(float(((yt - pred) ** 2).sum()) / denom)
        rel_id.append(float(((yt - z0_test) ** 2).sum()) / denom)
        alphas.append(alpha)
        target = np.full(len(split.test), j + 1)
        learned.append(_retrieval(pred, cands_n, target))
        ident.append(_retrieval(z0_test, cands_n, target))
    return {
        "elements": [element_label(fam, j) for j in range(len(zs))],
        "n_candidates": len(zs) + 1,
        "chance_mrr": chance_mrr(len(zs) + 1),
        "relative_error": rel,
        "relative_error_identity": rel_id,
        "mrr": [r["mrr"] for r in learned],
        "mrr_identity": [r["mrr"] for r in ident],
        "hit1": [r["hit1"] for r in learned],
        "ridge_alpha": alphas,
        "summary": _summary(rel, rel_id, learned, ident),
    }
