"""The heads B and C fit: closed-form ridge with intercept (α picked on a validation part) and SIE's MLP.

Ridge matches scikit-learn's Ridge(fit_intercept=True), float64, α in scikit-learn's units (a sum over rows,
so the grid is a per-sample value × n_fit). The MLP is SIE's "deep end" (Garrido et al. ICML 2023,
eval_angle_prediction.py: Linear(2D, 1024) → ReLU → Linear(1024, 1024) → ReLU → Linear(k); Adam, lr 1e-3, no
weight decay). SIE trains 50 epochs of batch 256, each over every 3DIEBench training object with a fresh
random pair of its views (tens of thousands of pairs an epoch); with the suite's few thousand fixed pairs
that would be a few hundred steps, so the suite runs more, smaller epochs and keeps the best one on the
validation images. Wider or multiplicative heads did not do better on the pixel encoder (benchmarks/RESULTS.md,
"equivariance-ceiling").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from worker.suites.equivariance.scores import balanced_accuracy, r2_per_output

RIDGE_ALPHAS_PER_SAMPLE = tuple(10.0 ** k for k in range(-6, 4))  # α = value × n_fit (scikit-learn's α units)
ALPHA_TIE = 1e-12  # a smaller α must beat a larger one by more than this
STD_FLOOR = 1e-12  # columns with a smaller train std are only centred
MLP_HIDDEN = (1024, 1024)
MLP_EPOCHS = 100
MLP_BATCH = 128
MLP_LR = 1e-3
MLP_WEIGHT_DECAY = 0.0
TARGET_STD_FLOOR = 1e-12  # regression targets are standardised with max(std, this)

Layer = tuple[torch.Tensor, torch.Tensor]  # (weight [in, out], bias [out])


# --- ridge (closed form) ------------------------------------------------------------------------------


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge with intercept: argmin_{W, b} ‖y − xW − b‖² + α‖W‖² (scikit-learn Ridge, fit_intercept=True).
    Closed form on centred data, float64: W = (XᵀX + αI)⁻¹ Xᵀ Y when p ≤ n, else the dual Xᵀ(XXᵀ + αI)⁻¹ Y;
    b = ȳ − x̄ W. Returns (W [p, k], b [k])."""
    x, y = x.double(), y.double()
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    xm, ym = x.mean(dim=0), y2.mean(dim=0)
    xc, yc = x - xm, y2 - ym
    n, p = xc.shape
    if p <= n:
        a = xc.T @ xc + alpha * torch.eye(p, dtype=xc.dtype, device=xc.device)
        w = torch.linalg.solve(a, xc.T @ yc)
    else:
        a = xc @ xc.T + alpha * torch.eye(n, dtype=xc.dtype, device=xc.device)
        w = xc.T @ torch.linalg.solve(a, yc)
    b = ym - xm @ w
    return (w[:, 0], b[0]) if squeeze else (w, b)


class RidgeSolver:
    """Ridge with intercept for many targets and α from one thin SVD of the centred inputs X − x̄ = U S Vᵀ:
    W(α) = V diag(s / (s² + α)) Uᵀ (Y − ȳ), the same minimiser as ridge_fit."""

    def __init__(self, x: torch.Tensor):
        x = x.double()
        self.mean = x.mean(dim=0)
        u, s, vh = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.u, self.s, self.v = u, s, vh.T

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(x − x̄) V, the coordinates predictions are built from."""
        return (x.double() - self.mean) @ self.v

    def predict(self, y: torch.Tensor, alpha: float, xv_proj: torch.Tensor) -> torch.Tensor:
        """Predictions at projected points xv_proj (from `project`) of the ridge fitted to y with α."""
        y = y.double()
        ym = y.mean(dim=0)
        uty = self.u.T @ (y - ym)
        return xv_proj @ ((self.s / (self.s**2 + alpha))[:, None] * uty) + ym


def pick_alpha(
    solver: RidgeSolver, y_fit: torch.Tensor, x_val_proj: torch.Tensor, score: Callable[[torch.Tensor], float],
    n_fit: int,
) -> float:  # fmt: skip
    """The α of the grid (RIDGE_ALPHAS_PER_SAMPLE × n_fit) with the best validation score; ties → larger α."""
    best, best_alpha = -math.inf, None
    for a in sorted(RIDGE_ALPHAS_PER_SAMPLE, reverse=True):
        alpha = a * n_fit
        sc = score(solver.predict(y_fit, alpha, x_val_proj))
        if best_alpha is None or sc > best + ALPHA_TIE:
            best, best_alpha = sc, alpha
    return float(best_alpha)


def standardize(x: torch.Tensor, train: np.ndarray) -> torch.Tensor:
    """Columns centred and scaled with the train rows' mean and std (std < STD_FLOOR → only centred)."""
    x = x.double()
    mu = x[train].mean(dim=0)
    sd = x[train].std(dim=0)
    sd = torch.where(sd > STD_FLOOR * max(float(sd.max()), 1.0), sd, torch.ones_like(sd))
    return (x - mu) / sd


# --- MLP head (torch, seeded) -------------------------------------------------------------------------


def _targets(y_fit: torch.Tensor, n_classes: int | None
             ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:  # fmt: skip
    """Training targets (standardised float32 regression targets, or class ids) and the decoder from the
    network's output back to the targets' units (or class ids by argmax)."""
    if n_classes is not None:
        return y_fit.detach().clone().long(), lambda out: out.argmax(dim=1)
    yf = y_fit.detach().clone().double().reshape(len(y_fit), -1)
    y_mu, y_sd = yf.mean(dim=0), yf.std(dim=0).clamp_min(TARGET_STD_FLOOR)
    return ((yf - y_mu) / y_sd).float(), lambda out: out.double() * y_sd + y_mu


def _init_layers(widths: Sequence[int], seed: int, device: torch.device) -> list[Layer]:
    """PyTorch's default Linear init, U(±1/√fan_in) for weights and biases, drawn on the CPU from
    torch.Generator(seed) so the head is the same on every device up to arithmetic."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return ((torch.rand(shape, generator=gen) * 2 - 1) * bound).to(device).requires_grad_(True)

    return [(uniform((a, b), a), uniform((b,), a)) for a, b in zip(widths[:-1], widths[1:], strict=True)]


def _forward(layers: list[Layer], x: torch.Tensor) -> torch.Tensor:
    for i, (w, b) in enumerate(layers):
        x = torch.addmm(b, x, w)
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def _train_epoch(layers: list[Layer], opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], order: np.ndarray, batch: int
                 ) -> None:  # fmt: skip
    """One pass over the rows in `order`, `batch` rows a step."""
    perm = torch.from_numpy(order).to(x.device)
    for a in range(0, x.shape[0], batch):
        idx = perm[a : a + batch]
        loss = loss_fn(_forward(layers, x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def mlp_fit_predict(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    x_test: torch.Tensor,
    *,
    n_classes: int | None = None,
    seed: int = 0,
    hidden: Sequence[int] = MLP_HIDDEN,
    epochs: int = MLP_EPOCHS,
    batch: int = MLP_BATCH,
    lr: float = MLP_LR,
    weight_decay: float = MLP_WEIGHT_DECAY,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Linear(p, h1) → ReLU → … → Linear(h_last, k) (SIE's deep-end head with the default `hidden`), Adam(W),
    minibatches in a default_rng(seed) order; MSE on standardised targets (regression) or cross-entropy
    (n_classes given). Keeps the epoch with the best validation score (R² per output / balanced accuracy) and
    returns its test predictions (targets' units, or class ids)."""
    dev = x_fit.device
    with torch.inference_mode(False), torch.enable_grad():
        xf, xv, xt = (t.detach().clone().float() for t in (x_fit, x_val, x_test))
        yf, decode = _targets(y_fit, n_classes)
        k = yf.shape[1] if n_classes is None else n_classes
        layers = _init_layers([xf.shape[1], *hidden, k], seed, dev)
        params = [t for layer in layers for t in layer]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=dev.type == "cuda")
        loss_fn = F.mse_loss if n_classes is None else F.cross_entropy
        score = r2_per_output if n_classes is None else balanced_accuracy
        order_rng = np.random.default_rng(seed)
        best, best_epoch, best_state = -math.inf, -1, [t.detach().clone() for t in params]
        for epoch in range(epochs):
            _train_epoch(layers, opt, xf, yf, loss_fn, order_rng.permutation(xf.shape[0]), batch)
            with torch.no_grad():
                sc = score(y_val, decode(_forward(layers, xv)))
            if sc > best:
                best, best_epoch, best_state = sc, epoch, [t.detach().clone() for t in params]
        with torch.no_grad():
            for t, s in zip(params, best_state, strict=True):
                t.copy_(s)
            pred = decode(_forward(layers, xt))
    return pred.detach(), {"best_epoch": float(best_epoch + 1), "val_score": float(best)}
