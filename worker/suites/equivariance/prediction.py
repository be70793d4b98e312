"""B. Information retained: predict a transformation's parameters from the features of both views (Wang et
al. 2025, arXiv 2503.18753; SIE, Garrido et al. ICML 2023) or, for rot90, from the transformed view alone
(E-SSL, Dangovski et al. ICLR 2022).

B_DRAWS random parameters per image give pairs (x, Tx); a head on standardised concat[f(x), f(Tx)] predicts
them; every pair of an image stays on the image's side of the split (split.py). A linear head cannot compute
the products that relate x to Tx (an angle between two views, a ratio of intensities), so on most encoders
the rotation R² is ≈ 0 with the linear head and the MLP is the informative one; it needs thousands of pairs
(hence B_DRAWS). Continuous families report `r2` (mean over outputs, scikit-learn uniform_average),
`r2_global` (SIE's single R²) and `r2_outputs`; discrete ones `balanced_accuracy` and `accuracy`.
linear = closed-form ridge (one-hot targets + argmax for classes); mlp = SIE's deep-end head (heads.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.suites.equivariance.heads import RidgeSolver, mlp_fit_predict, pick_alpha, standardize
from worker.suites.equivariance.scores import balanced_accuracy, r2_global, r2_outputs, r2_per_output
from worker.suites.equivariance.split import Split

B_DRAWS = 4  # random parameter draws (pairs) per image in B: 1000 images → 4000 pairs


def _scores(y: np.ndarray, pred: np.ndarray, discrete: bool) -> dict[str, Any]:
    """Test scores of predictions (class ids or target values)."""
    if discrete:
        return {"balanced_accuracy": balanced_accuracy(y, pred), "accuracy": float(np.mean(pred == y))}
    return {"r2": r2_per_output(y, pred), "r2_global": r2_global(y, pred), "r2_outputs": r2_outputs(y, pred)}


def _linear(xs: torch.Tensor, y: np.ndarray, split: Split, discrete: bool, n_classes: int) -> dict[str, Any]:
    """Ridge with α picked on the validation part, refit on all train rows; one-hot + argmax for classes."""
    dev = xs.device
    sel = RidgeSolver(xs[split.fit])
    val_proj = sel.project(xs[split.val])
    full = RidgeSolver(xs[split.train])
    test_proj = full.project(xs[split.test])
    y_val = y[split.val]
    if discrete:
        yt = torch.zeros(len(y), n_classes, dtype=torch.float64, device=dev)
        yt[torch.arange(len(y)), torch.as_tensor(y, device=dev)] = 1.0

        def score(p: torch.Tensor) -> float:
            return balanced_accuracy(y_val, p.argmax(dim=1).cpu().numpy())
    else:
        yt = torch.as_tensor(y, dtype=torch.float64, device=dev)

        def score(p: torch.Tensor) -> float:
            return r2_per_output(y_val, p)

    alpha = pick_alpha(sel, yt[split.fit], val_proj, score, len(split.fit))
    pred = full.predict(yt[split.train], alpha, test_proj)
    pred = (pred.argmax(dim=1) if discrete else pred).cpu().numpy()
    return {**_scores(y[split.test], pred, discrete), "alpha": alpha}


def predict_params(
    x: torch.Tensor, y: np.ndarray, split: Split, *, discrete: bool, n_classes: int, seed: int, mlp: bool,
    mlp_epochs: int,
) -> dict[str, Any]:  # fmt: skip
    """B: ridge and MLP heads on standardised inputs x [n, p] predicting y; scores on the test images."""
    xs = standardize(x, split.train)
    out: dict[str, Any] = {"linear": _linear(xs, y, split, discrete, n_classes)}
    if mlp:
        yt = torch.as_tensor(y, device=x.device)
        pred, info = mlp_fit_predict(
            xs[split.fit], yt[split.fit], xs[split.val], y[split.val], xs[split.test],
            n_classes=n_classes if discrete else None, seed=seed, epochs=mlp_epochs,
        )  # fmt: skip
        out["mlp"] = {**_scores(y[split.test], pred.cpu().numpy(), discrete), **info}
    return out
