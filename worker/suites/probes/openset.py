"""Open-set detection: some classes are held out as unknown; k-NN and the probe are trained on the known
classes' train rows, every test row is scored by its known-ness, and AUROC and FPR at 95 % TPR (known =
positive, ``common.roc``) say how well the scores separate known from unknown test rows.

Scores: knn = max cosine to the known train rows; msp = max softmax of the probe (Hendrycks & Gimpel, ICLR
2017); energy = T·logsumexp(logits / T), T = 1 (the negative free energy, Liu et al., NeurIPS 2020).

Sample counts. FPR at 95 % TPR is read at the threshold where 95 % of the known rows score above it: with P
known rows TPR moves in steps of 1/P, so below P = 1/(1 − 0.95) = 20 the "95 %" threshold is the lowest known
score (TPR 100 %); with N unknown rows FPR moves in steps of 1/N, and one unknown row more or less on the
wrong side moves it by more than 5 points below N = 20. AUROC averages P·N pairs, but its standard error
(Hanley & McNeil, Radiology 1982, at AUROC 0.5) is 0.09 with 20 rows on each side and 0.13 with 5 unknown
rows however many known ones. So every open-set metric needs at least
OPENSET_MIN_ROWS = ⌈1/(1 − OPENSET_TPR)⌉ = 20 known AND 20 unknown test rows, and is omitted (with a warning)
below; the counts are in the variant either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn
from worker.suites.common.roc import DEFAULT_TPR, auroc, fpr_at_tpr

from .inputs import labels_list
from .knn import max_cosine_similarity
from .linear import chunked_logits, select_c
from .splits import SPLIT_SEED

OPENSET_SHARE = 0.2  # default share of classes held out as unknown (at least 1, at least 2 known remain)
OPENSET_MIN_CLASSES = 3
OPENSET_TPR = DEFAULT_TPR
OPENSET_MIN_ROWS = 20  # ⌈1/(1 − OPENSET_TPR)⌉ known and unknown test rows (module docstring)
ENERGY_T = 1.0


def choose_holdout_classes(
    classes: np.ndarray, share: float = OPENSET_SHARE, seed: int = SPLIT_SEED
) -> np.ndarray:
    """max(1, round(share·K)) classes (at most K − 2), ``np.random.default_rng(seed).choice`` without
    replacement, returned sorted."""
    cls = np.unique(np.asarray(classes))
    n_hold = min(max(1, int(np.floor(share * cls.size + 0.5))), cls.size - 2)
    if n_hold < 1:
        raise ValueError(f"open-set needs at least {OPENSET_MIN_CLASSES} classes, got {cls.size}")
    return np.sort(np.random.default_rng(seed).choice(cls, size=n_hold, replace=False))


def openset_scores(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Known-ness scores msp and energy (module docstring) from a probe's logits."""
    lg = logits.detach().to(torch.float64)
    return {"msp": torch.softmax(lg, dim=1).amax(dim=1).cpu().numpy(),
            "energy": (ENERGY_T * torch.logsumexp(lg / ENERGY_T, dim=1)).cpu().numpy()}


@dataclass
class OpenSetResult:
    """What the open-set part adds to the suite's result."""

    metrics: dict[str, float]
    figure: dict[str, Any] | None
    variant: dict[str, Any]


def _held_out(
    all_labels: np.ndarray, holdout_classes: Any, share: float, seed: int
) -> tuple[np.ndarray, str]:
    """(unknown classes, how they were chosen)."""
    if holdout_classes is None:
        return choose_holdout_classes(all_labels, share, seed), f"{share:.0%} of classes, default_rng({seed}).choice"
    held = np.unique(np.asarray(list(holdout_classes)))
    if not np.all(np.isin(held, all_labels)):
        raise ValueError(f"holdout_classes {held[~np.isin(held, all_labels)].tolist()} are not labels")
    return held, "given"


def run_openset(
    x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, y_te: np.ndarray, all_labels: np.ndarray,
    cs: np.ndarray, *, enabled: bool, holdout_classes: Any, share: float, seed: int, device: torch.device,
    memory_budget_bytes: int, warnings: list[str], progress: ProgressFn, min_rows: int = OPENSET_MIN_ROWS,
    **fit_kw: Any,
) -> OpenSetResult:
    """The open-set protocol; skipped when not `enabled`, and with a warning when there are fewer than
    OPENSET_MIN_CLASSES classes or fewer than `min_rows` known or unknown test rows (module docstring); the
    counts are in the variant (openset_n_known_test, openset_n_unknown_test). Progress: [0.6, 0.98]."""
    if not enabled:
        return OpenSetResult({}, None, {"openset": "skipped (openset=False)"})
    if all_labels.size < OPENSET_MIN_CLASSES:
        warnings.append(f"skipped: {all_labels.size} classes < {OPENSET_MIN_CLASSES}")
        return OpenSetResult({}, None, {"openset": warnings[-1]})
    held, held_source = _held_out(all_labels, holdout_classes, share, seed)
    known_tr = ~np.isin(y_tr, held)
    is_known_te = ~np.isin(y_te, held)
    if np.unique(y_tr[known_tr]).size < 2:
        raise ValueError("open-set needs at least 2 known classes with train rows")
    n_known, n_unknown = int(is_known_te.sum()), int((~is_known_te).sum())
    counts = {"openset_held_out_classes": labels_list(held), "openset_holdout_source": held_source,
              "openset_n_known_test": n_known, "openset_n_unknown_test": n_unknown,
              "openset_min_rows": min_rows}
    if min(n_known, n_unknown) < max(1, min_rows):
        skipped = (f"open-set metrics omitted: the test split has {n_known} known-class and {n_unknown} "
                   f"unknown-class rows (held-out classes {labels_list(held)}); AUROC and FPR at "
                   f"{OPENSET_TPR:.0%} TPR need at least {max(1, min_rows)} of each")
        warnings.append(skipped)
        return OpenSetResult({}, None, {"openset": skipped, **counts})
    dev = device
    kt = torch.as_tensor(np.flatnonzero(known_tr), device=dev)
    xk, yk = x_tr[kt], y_tr[known_tr]
    s_knn = max_cosine_similarity(xk, x_te, device=dev, memory_budget_bytes=memory_budget_bytes,
                                  progress=lambda f, m: progress(0.6 + 0.05 * f, "open-set " + m))
    lp_os = select_c(xk, yk, cs, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                     progress=lambda f, m: progress(0.65 + 0.33 * f, "open-set probe: " + m), **fit_kw)
    sc = {"knn": s_knn, **openset_scores(chunked_logits(lp_os.final, x_te, memory_budget_bytes))}
    au = {key: auroc(v, is_known_te) for key, v in sc.items()}
    fp = {key: fpr_at_tpr(v, is_known_te, OPENSET_TPR) for key, v in sc.items()}
    metrics: dict[str, float] = {}
    for key in sc:
        metrics[f"openset_auroc_{key}"] = au[key]
        metrics[f"openset_fpr95_{key}"] = fp[key]
    figure = {"held_out_classes": labels_list(held), "auroc": au, "fpr95": fp, "best_c": lp_os.best_c,
              "n_known_test": n_known, "n_unknown_test": n_unknown}
    variant = {"openset": "k-NN and probe trained on the known classes' train rows; test rows of "
                          "held-out classes are unknown (negative), known = positive",
               **counts, "openset_share": share, "openset_best_c": lp_os.best_c,
               "openset_scores": "knn: max cosine to known train rows; msp: max softmax; "
                                 f"energy: T·logsumexp(logits/T), T = {ENERGY_T:g}",
               "openset_fpr_at_tpr": OPENSET_TPR}
    return OpenSetResult(metrics, figure, variant)
