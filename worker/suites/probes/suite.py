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
from .logreg import DEFAULT_C_GRID
from .losses import GCE_Q, LOSSES
from .metrics import TOPK, classification_metrics, confusion_figure
from .openset import OPENSET_SHARE, run_openset
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
    seed: int = SPLIT_SEED,
    max_iter: int = LBFGS_MAX_ITER,
    tol: float = LBFGS_TOL,
    memory_budget_bytes: int = MEMORY_BUDGET,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Every probe metric of METRICS.md on N×D embeddings (ndarray, read-only np.memmap or tensor) with labels.

    Metrics: linear_top1, linear_top5, linear_balanced_acc, linear_best_c; knn{k}_top1, knn{k}_top5 per k;
    openset_auroc_{knn,msp,energy}, openset_fpr95_{knn,msp,energy} (unless fewer than 3 classes).
    Figures: c_sweep, confusion_matrix, per_class_accuracy, knn, openset. `seed` drives the default split,
    the holdout of train and the default choice of unknown classes.
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
    metrics: dict[str, float] = {"linear_top1": cm["top1"], "linear_top5": cm["top5"],
                                 "linear_balanced_acc": cm["balanced_acc"], "linear_best_c": lp.best_c}
    warnings += _linear_warnings(lp, max_iter, tol)

    knn = _knn_step(x_tr, y_tr, x_te, y_te, all_labels, knn_k, knn_temperature, dev, memory_budget_bytes,
                    metrics, warnings, progress)
    os_res = run_openset(x_tr, y_tr, x_te, y_te, all_labels, cs, enabled=openset, holdout_classes=holdout_classes,
                         share=openset_share, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                         warnings=warnings, progress=progress, **fit_kw)
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
        "top5_trivial": bool(all_labels.size <= TOPK), "memory_budget_bytes": memory_budget_bytes,
        **os_res.variant,
    }
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _knn_step(
    x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, y_te: np.ndarray, all_labels: np.ndarray,
    ks: Sequence[int], temperature: float, dev: torch.device, budget: int, metrics: dict[str, float],
    warnings: list[str], progress: ProgressFn,
) -> KnnResult:
    """k-NN on train, its top-1 / top-5 test accuracies into `metrics`; progress over [0.45, 0.6]."""
    knn = weighted_knn(x_tr, y_tr, x_te, ks=ks, temperature=temperature, classes=all_labels, device=dev,
                       memory_budget_bytes=budget, progress=lambda f, m: progress(0.45 + 0.15 * f, m))
    for k in knn.k:
        metrics[f"knn{k}_top1"] = knn.accuracy(y_te, k, 1)
        metrics[f"knn{k}_top5"] = knn.accuracy(y_te, k, TOPK)
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
                "top1": [metrics[f"knn{k}_top1"] for k in knn.k], "top5": [metrics[f"knn{k}_top5"] for k in knn.k]},
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
        "loss": loss,
        "gce_q": GCE_Q if loss == "gce" else None,
        "c_grid": _json(lp.c_grid),
        "lbfgs": {"history": LBFGS_HISTORY, "tol": tol, "max_iter": max_iter,
                  "final_status": lp.final.status[0], "final_n_iter": int(lp.final.n_iter[0])},
        "knn_k": list(knn.k),
        "knn_k_effective": list(knn.k_effective),
        "knn_temperature": knn_temperature,
        "knn": "L2-normalised, cosine, top-k train rows, vote exp(sim/T); similarity ties: torch.topk order; "
               "class-score ties: lower class first; classes without votes never count for top-5",
        "knn_chunks": {"query": knn.query_chunk, "train": knn.train_chunk},
    }


def _json(a: Any) -> list[float | None]:
    """Floats for the JSON result; NaN / ±inf become None (strict JSON has no NaN)."""
    return to_list(a, nonfinite_as_none=True)
