"""The probes suite: ``run_probes`` (every probe metric of METRICS.md, "Probe suite") and the registry's entry
point ``on_embeddings`` (repscope.suites)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import matrix_shape, to_list
from worker.suites.common.budget import MEMORY_BUDGET
from worker.suites.common.device import resolve_device
from worker.suites.common.topk import KNN_TEMPERATURE

from .inputs import as_labels, labels_list, load_rows
from .knn import KNN_K, KnnResult, weighted_knn
from .lbfgs import LBFGS_HISTORY, LBFGS_MAX_ITER, LBFGS_TOL
from .linear import LinearProbeResult, chunked_logits, select_c
from .logreg import BINARY_C_FACTOR, DEFAULT_C_GRID
from .losses import GCE_Q, LOSSES
from .metrics import TOPK, classification_metrics, confusion_figure, top5_omission
from .openset import OPENSET_MIN_ROWS, OPENSET_SHARE, run_openset
from .splits import HOLDOUT_FRACTION, SPLIT_SEED, TEST_FRACTION, resolve_split


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    if arrays.labels is None:
        raise ValueError("the probes suite needs labels; this artifact has none")
    return run_probes(arrays.embeddings, arrays.labels, split=arrays.split, device=device, progress=progress,
                      **params)


def run_probes(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    split: np.ndarray | None = None,
    device: str | torch.device | None = None,
    c_grid: Sequence[float] | None = None,
    loss: str = "ce",
    knn_k: Sequence[int] = KNN_K,
    knn_temperature: float = KNN_TEMPERATURE,
    holdout_classes: Sequence[int] | None = None,
    openset_share: float = OPENSET_SHARE,
    openset: bool = True,
    openset_min_rows: int = OPENSET_MIN_ROWS,
    seed: int = SPLIT_SEED,
    max_iter: int = LBFGS_MAX_ITER,
    tol: float = LBFGS_TOL,
    memory_budget_bytes: int = MEMORY_BUDGET,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Every probe metric of METRICS.md on N×D embeddings (ndarray, read-only np.memmap or tensor) with labels.

    Metrics: linear_top1, linear_top5, linear_balanced_acc, linear_best_c (scikit-learn's C, binary model for
    2 classes); knn{k}_top1, knn{k}_top5 per k; openset_{auroc,fpr95}_{knn,msp,energy}.
    Omitted, each with a warning: every top-5 with ≤ 5 classes (trivial), knn{k}_top5 when fewer than 5
    neighbours vote (k_effective < 5), the open-set metrics with < 3 classes or fewer than `openset_min_rows`
    known or unknown test rows. Figures: c_sweep, confusion_matrix, per_class_accuracy, knn, openset. `seed`
    drives the default split, the holdout of train and the default choice of unknown classes.
    """
    n, d = matrix_shape(embeddings)
    y = as_labels(labels)
    if y.size != n:
        raise ValueError(f"{n} embeddings but {y.size} labels")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    dev = resolve_device(device, embeddings)
    cs = np.sort(np.asarray(list(DEFAULT_C_GRID if c_grid is None else c_grid), dtype=np.float64))
    tr, te, split_source = resolve_split(y, split, seed=seed)
    y_tr, y_te = y[tr], y[te]
    if np.unique(y_tr).size < 2:
        raise ValueError("the train split must hold at least 2 classes")
    all_labels = np.unique(y)
    warnings: list[str] = []
    fit_kw = {"loss": loss, "max_iter": max_iter, "tol": tol}

    progress(0.0, "loading rows")
    x_tr = load_rows(embeddings, tr, dev)
    x_te = load_rows(embeddings, te, dev)

    lp = select_c(x_tr, y_tr, cs, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                  progress=lambda f, m: progress(0.02 + 0.43 * f, "linear probe: " + m), **fit_kw)
    cm = classification_metrics(chunked_logits(lp.final, x_te, memory_budget_bytes), y_te, lp.final.classes,
                                all_labels)
    metrics = _linear_metrics(lp, cm, int(all_labels.size), warnings)
    warnings += _linear_warnings(lp, max_iter, tol)

    knn = _knn_step(x_tr, y_tr, x_te, y_te, all_labels, knn_k, knn_temperature, dev, memory_budget_bytes,
                    metrics, warnings, progress)
    os_res = run_openset(x_tr, y_tr, x_te, y_te, all_labels, cs, enabled=openset, holdout_classes=holdout_classes,
                         share=openset_share, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                         warnings=warnings, progress=progress, min_rows=openset_min_rows, **fit_kw)
    metrics.update(os_res.metrics)

    figures = _figures(lp, cm, knn, metrics, all_labels, warnings)
    if os_res.figure is not None:
        figures["openset"] = os_res.figure
    variant: dict[str, Any] = {
        "split_source": split_source, "n_train": int(tr.size), "n_test": int(te.size), "seed": seed,
        "holdout_share": HOLDOUT_FRACTION, "n_holdout": lp.n_holdout,
        "test_share": None if split is not None else TEST_FRACTION, "n_classes": int(all_labels.size),
        "dim": d, "device": str(dev),
        **_method_variant(lp, knn, loss=loss, tol=tol, max_iter=max_iter, knn_temperature=knn_temperature),
        "top5_trivial": bool(all_labels.size <= TOPK),
        "top5": top5_omission(int(all_labels.size)) or f"true class among the first {TOPK} of all "
                f"{all_labels.size} classes ranked (k-NN: knn{{k}}_top5 omitted where k_effective < {TOPK})",
        "memory_budget_bytes": memory_budget_bytes,
        **os_res.variant,
    }
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _linear_metrics(
    lp: LinearProbeResult, cm: dict[str, Any], n_classes: int, warnings: list[str]
) -> dict[str, float]:
    """linear_top1, linear_top5 (omitted with a warning when ``top5_omission``), linear_balanced_acc and
    linear_best_c (scikit-learn's C; binary LogisticRegression(C) for 2 classes, ``logreg``)."""
    metrics = {"linear_top1": cm["top1"], "linear_top5": cm["top5"], "linear_balanced_acc": cm["balanced_acc"],
               "linear_best_c": lp.best_c}
    skip = top5_omission(n_classes)
    if skip is not None:
        del metrics["linear_top5"]
        warnings.append(f"linear_top5 and knn{{k}}_top5 omitted: {skip}")
    return metrics


def _knn_step(
    x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, y_te: np.ndarray, all_labels: np.ndarray,
    ks: Sequence[int], temperature: float, dev: torch.device, budget: int, metrics: dict[str, float],
    warnings: list[str], progress: ProgressFn,
) -> KnnResult:
    """k-NN on train, its top-1 / top-5 test accuracies into `metrics`; progress over [0.45, 0.6]. top-5 is
    omitted with ≤ TOPK classes (``top5_omission``, warned by the caller) and, with a warning, for a k whose
    k_effective < TOPK: fewer voters than ranks, the rest of the top 5 would be vote-less classes in index
    order (DINO's eval_knn.py reports top-min(5, k) there under the name top-5)."""
    knn = weighted_knn(x_tr, y_tr, x_te, ks=ks, temperature=temperature, classes=all_labels, device=dev,
                       memory_budget_bytes=budget, progress=lambda f, m: progress(0.45 + 0.15 * f, m))
    few_voters = []
    for k, k_e in zip(knn.k, knn.k_effective, strict=True):
        metrics[f"knn{k}_top1"] = knn.accuracy(y_te, k, 1)
        if top5_omission(int(all_labels.size)) is not None:
            continue
        if k_e < TOPK:
            few_voters.append(k)
            continue
        metrics[f"knn{k}_top5"] = knn.accuracy(y_te, k, TOPK)
    if few_voters:
        warnings.append(f"knn{{k}}_top5 omitted for k = {few_voters}: fewer than {TOPK} neighbours vote, so "
                        f"the top {TOPK} would be filled with classes that got no vote")
    clamped = {k: ke for k, ke in zip(knn.k, knn.k_effective, strict=True) if ke != k}
    if clamped:
        warnings.append(f"k larger than the {y_tr.size} train rows was clamped: {clamped}")
    return knn


def _linear_warnings(lp: LinearProbeResult, max_iter: int, tol: float) -> list[str]:
    """A C at the edge of the grid, an unconverged final probe, unconverged C's of the sweep."""
    out = []
    cs = lp.c_grid
    if lp.best_index in (0, cs.size - 1) and cs.size > 1:
        out.append(f"the chosen C = {lp.best_c:g} is at the edge of the grid [{cs[0]:g}, {cs[-1]:g}]: widen c_grid")
    if lp.final.status[0] == "max_iter":
        out.append(f"the final linear probe stopped at max_iter = {max_iter} with max|grad| = "
                   f"{lp.final.grad_max[0]:.2e} > tol = {tol:g}")
    unconverged = [float(c) for c, s in zip(lp.c_grid, lp.sweep.status, strict=True) if s == "max_iter"]
    if unconverged:
        out.append(f"C sweep: {len(unconverged)} value(s) stopped at max_iter ({unconverged})")
    return out


def _figures(
    lp: LinearProbeResult, cm: dict[str, Any], knn: KnnResult, metrics: dict[str, float], all_labels: np.ndarray,
    warnings: list[str],
) -> dict[str, Any]:
    return {
        "c_sweep": {"c": _json(lp.c_grid), "holdout_top1": _json(lp.holdout_top1), "best_c": lp.best_c,
                    "n_iter": [int(i) for i in lp.sweep.n_iter], "status": list(lp.sweep.status)},
        "per_class_accuracy": {"labels": labels_list(all_labels), "values": _json(cm["recall"])},
        "confusion_matrix": confusion_figure(all_labels, cm["confusion"], warnings),
        "knn": {"k": list(knn.k), "k_effective": list(knn.k_effective),
                "top1": [metrics[f"knn{k}_top1"] for k in knn.k],
                "top5": _omitted_as_none([metrics.get(f"knn{k}_top5") for k in knn.k])},
    }


def _method_variant(
    lp: LinearProbeResult, knn: KnnResult, *, loss: str, tol: float, max_iter: int, knn_temperature: float
) -> dict[str, Any]:
    """How the linear and k-NN probes ran (the variant's method keys, in their order)."""
    return {
        "dtype": "float32 features, float64 objective sums",
        "linear": "standardised as StandardScaler (fitting rows' statistics), multinomial logistic regression, bias unpenalised, "
                  "objective mean loss + ‖W‖²/(2·C·n) (scikit-learn's C), batched L-BFGS, C picked on the holdout "
                  "(ties -> smaller C) then refit on all train",
        "c_convention": "scikit-learn LogisticRegression(C): multinomial for K > 2; for K = 2 its binary "
                        "model (one weight vector), which the two-column fit equals when solved at "
                        f"C·{BINARY_C_FACTOR:g} (done so: c_grid and linear_best_c are scikit-learn's C for "
                        "every K)",
        "loss": loss,
        "gce_q": GCE_Q if loss == "gce" else None,
        "c_grid": _json(lp.c_grid),
        "lbfgs": {"history": LBFGS_HISTORY, "tol": tol, "max_iter": max_iter,
                  "final_status": lp.final.status[0], "final_n_iter": int(lp.final.n_iter[0])},
        "knn_k": list(knn.k),
        "knn_k_effective": list(knn.k_effective),
        "knn_temperature": knn_temperature,
        "knn": "DINO eval_knn.py: L2-normalised, cosine, top-k train rows, vote exp(sim/T) summed per "
               "class, all classes ranked by vote (classes without votes rank too, at 0); similarity ties: "
               "lower train row index first (the first k of a stable descending sort, whatever the "
               "chunking; identical train rows share one computed similarity); class-score ties: lower "
               "class index first",
        "knn_chunks": {"query": knn.query_chunk, "train": knn.train_chunk},
        "knn_distinct_train_rows": knn.n_distinct_train,
    }


def _omitted_as_none(values: list[float | None]) -> list[float | None] | None:
    """A figure series with omitted points as None; None when every point is omitted (no trace drawn)."""
    return None if all(v is None for v in values) else values


def _json(a: Any) -> list[float | None]:
    """Floats for the JSON result; NaN / ±inf become None (strict JSON has no NaN)."""
    return to_list(a, nonfinite_as_none=True)
