"""Classification metrics of a probe's class scores: top-1 / top-5, balanced accuracy, per-class recall and the
confusion matrix (as ``sklearn.metrics`` top_k_accuracy_score, balanced_accuracy_score, confusion_matrix)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .inputs import as_labels, labels_list

TOPK = 5
CONFUSION_MAX_CLASSES = 256  # larger confusion matrices are reported as their largest off-diagonal cells
CONFUSION_TOP_CELLS = 1000


def rank(scores: torch.Tensor, top: int) -> np.ndarray:
    """Indices of the `top` largest entries per row, equal values in increasing index (a stable descending
    sort: DINO's ``probs.sort(1, True)`` with its implementation-defined tie order made deterministic)."""
    _, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return idx[:, :top].cpu().numpy()


def top5_omission(n_classes: int) -> str | None:
    """Why top-5 accuracy is not reported (None: it is): with ≤ TOPK classes every label is in the top 5."""
    if n_classes <= TOPK:
        return f"{n_classes} classes ≤ {TOPK}: every class is in the top {TOPK}, so top-{TOPK} is trivial"
    return None


def classification_metrics(
    logits: torch.Tensor | np.ndarray, y_true: np.ndarray, classes: np.ndarray, all_labels: np.ndarray
) -> dict[str, Any]:
    """top-1, top-5 (ties in the logits broken towards the lower class index), balanced accuracy (mean recall
    over the classes present in y_true), per-class recall and the confusion matrix [true, predicted] over
    `all_labels` (sorted label values; classes the model never saw count as errors)."""
    lg = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    ranked = rank(lg, min(TOPK, lg.shape[1]))  # indices into classes
    pred_labels = classes[ranked]
    y = as_labels(y_true)
    top1 = float(np.mean(pred_labels[:, 0] == y))
    top5 = float(np.mean((pred_labels == y[:, None]).any(axis=1)))
    li = np.searchsorted(all_labels, y)
    pi = np.searchsorted(all_labels, pred_labels[:, 0])
    n_l = all_labels.size
    cm = np.bincount(li * n_l + pi, minlength=n_l * n_l).reshape(n_l, n_l)
    support = cm.sum(axis=1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {"top1": top1, "top5": top5, "balanced_acc": float(np.nanmean(recall)), "recall": recall,
            "confusion": cm}


def confusion_figure(labels: np.ndarray, cm: np.ndarray, warnings: list[str]) -> dict[str, Any]:
    """The confusion-matrix figure: the full matrix up to CONFUSION_MAX_CLASSES classes, else its
    CONFUSION_TOP_CELLS largest off-diagonal cells (and a warning saying so)."""
    if labels.size <= CONFUSION_MAX_CLASSES:
        return {"labels": labels_list(labels), "matrix": cm.astype(int).tolist()}
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:CONFUSION_TOP_CELLS]
    cells = [[int(labels[i // labels.size]), int(labels[i % labels.size]), int(off.flat[i])]
             for i in flat if off.flat[i] > 0]
    warnings.append(f"{labels.size} classes > {CONFUSION_MAX_CLASSES}: the confusion matrix figure lists its "
                    f"{len(cells)} largest off-diagonal cells [true, predicted, count] instead of the full matrix")
    return {"labels": labels_list(labels), "matrix": None, "top_confusions": cells,
            "diagonal": [int(v) for v in np.diag(cm)]}
