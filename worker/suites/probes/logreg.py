"""L2-regularised multinomial logistic regression for a whole grid of C at once, on standardised features.

Objective per C in scikit-learn's convention (``LogisticRegression(C=C)``, lbfgs, multinomial), divided by C·n:

    f_C(W, b) = (1/n) Σ_i ℓ(x_std,i W + b, y_i) + ‖W‖² / (2 C n)     (= [C Σ_i ℓ_i + ½‖W‖²] / (C n))

with W (D×K, all penalised), b (K) unpenalised, ℓ a comp-sum loss (``losses``), minimised by the batched
L-BFGS of ``lbfgs``.

Two classes. scikit-learn then fits its binary model, one weight vector w with C Σ_i ℓ_i + ½‖w‖². Softmax over
two columns depends on w_2 − w_1 only, and for a given difference ½(‖w_1‖² + ‖w_2‖²) is smallest at
w_2 = −w_1 = w/2, i.e. ¼‖w‖²: the two-column fit at C' equals the binary fit at 2C'. So for K = 2 the
two-column problem is solved at C' = C / 2 (BINARY_C_FACTOR) and C keeps scikit-learn's meaning for every K:
same predictions and probabilities as ``LogisticRegression(C=C)``, binary or multinomial.

Preconditioning (an exact change of variables, same minimiser). Standardised features are rotated to their
principal axes, Z = X_std V (V orthogonal from eigh of X_stdᵀX_std / n, so ‖W‖² is unchanged), and each C
optimises U with W_pca = diag(s) U, s_j = (h λ_j + 1/(C n))^(−1/4), h = (1/K)(1 − 1/K) the softmax curvature
at W = 0 and λ_j the feature covariance eigenvalues. The full scaling (exponent −1/2) would make the Hessian
at W = 0 the identity, but at large C on nearly separable data the curvature collapses onto the margin rows
and that scaling then slows L-BFGS down; its square root (PRECONDITION_POWER) needed the fewest iterations
(benchmarks/RESULTS.md). The reported weights are W = V W_pca in the standardised basis (scikit-learn's
``coef_.T``), and the stopping test max|∇_W f| ≤ tol is evaluated in that basis, as scikit-learn's gtol is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.budget import MEMORY_BUDGET, rows_per_chunk
from worker.suites.common.device import resolve_device

from .gemm import matmul
from .inputs import as_features, as_labels
from .lbfgs import LBFGS_HISTORY, LBFGS_MAX_ITER, LBFGS_TOL, _Data, _lbfgs_batch, _objective
from .losses import GCE_Q, loss_q

# C in scikit-learn's convention: minimise C·Σ_i loss_i + ½‖W‖² (bias unpenalised). Default grid: 15 values,
# half a decade apart, 10^-5 … 10^2 (DINOv2 sweeps 45 values in 10^[-6, 5]; pass `c_grid` for that).
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-5.0, 2.0 + 1e-9, 0.5))
PRECONDITION_POWER = 0.25  # s_j = (h λ_j + 1/(C n))^(−1/4): the square root of the full scaling
# K = 2: the two-column fit at C·BINARY_C_FACTOR equals scikit-learn's binary LogisticRegression(C).
BINARY_C_FACTOR = 0.5


@dataclass
class LogRegFit:
    """Multinomial logistic regressions, one per C, on standardised features.

    weights[c] (D×K) and bias[c] (K) act on standardised features x_std = (x − mean) / scale:
    logits = x_std · W + b. ``weights[c].T`` is scikit-learn's ``coef_`` and ``bias[c]`` its ``intercept_``
    (K = 2: its binary ``coef_[0]`` is weights[c][:, 1] − weights[c][:, 0], ``intercept_[0]`` likewise).
    """

    c: np.ndarray  # (n_C,) C in scikit-learn's convention (binary LogisticRegression(C) when K = 2)
    weights: torch.Tensor  # (n_C, D, K)
    bias: torch.Tensor  # (n_C, K)
    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    classes: np.ndarray  # (K,) label values, sorted; column k of the logits is classes[k]
    loss: str
    q: float
    objective: np.ndarray  # (n_C,) final f = mean loss + ‖W‖²/(2C'n), C' = c_fit, float64
    grad_max: np.ndarray  # (n_C,) final max|∇f| in the standardised basis
    n_iter: np.ndarray  # (n_C,) L-BFGS iterations
    status: list[str]  # per C: converged | precision floor | line search | max_iter
    n_train: int
    c_fit: np.ndarray | None = None  # (n_C,) C' of the K-column problem solved (C·BINARY_C_FACTOR if K = 2)

    @property
    def converged(self) -> np.ndarray:
        return np.array([s != "max_iter" for s in self.status])

    def logits(self, x: np.ndarray | torch.Tensor, index: int | None = None) -> torch.Tensor:
        """Logits (m, K) of C number `index`, or (n_C, m, K) for every C when index is None."""
        xs = self.standardize(x)
        if index is not None:
            return xs @ self.weights[index] + self.bias[index]
        return torch.einsum("md,cdk->cmk", xs, self.weights) + self.bias[:, None, :]

    def predict(self, x: np.ndarray | torch.Tensor, *, memory_budget_bytes: int = MEMORY_BUDGET) -> np.ndarray:
        """Arg-max class indices (into ``classes``), (n_C, m), rows processed in chunks."""
        x = as_features(x, self.weights.device, self.weights.dtype)
        n_c, d, k = self.weights.shape
        w_all = self.weights.permute(1, 0, 2).reshape(d, n_c * k)
        rows = rows_per_chunk(memory_budget_bytes, 4 * n_c * k + 4 * d)
        out = []
        for a in range(0, x.shape[0], rows):
            xs = (x[a : a + rows] - self.mean) / self.scale
            lg = matmul(xs, w_all).view(-1, n_c, k) + self.bias
            out.append(lg.argmax(dim=2).T.cpu())
        return torch.cat(out, dim=1).numpy() if out else np.zeros((n_c, 0), dtype=np.int64)

    def standardize(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = as_features(x, self.weights.device, self.weights.dtype)
        return (x - self.mean) / self.scale


def standardize_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) exactly as scikit-learn's StandardScaler: mean and population variance (ddof 0) in
    float64 (two passes), scale = √var, and scale = 1 for a feature it deems constant,
        var ≤ n·eps·var + (n·|mean|·eps)²   (eps of float64; Chan, Golub & LeVeque's error bound),
    so a feature that varies at 1e-33 (real sentence embeddings have such dimensions) is scaled up to unit
    variance as scikit-learn does, and only a truly constant one is left unscaled."""
    x64 = x.to(torch.float64)
    n = x64.shape[0]
    mean = x64.mean(dim=0)
    var = ((x64 - mean) ** 2).mean(dim=0)
    eps = torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = torch.where(constant, torch.ones_like(var), var.sqrt())
    return mean.to(x.dtype), scale.to(x.dtype)


@dataclass
class _Sweep:
    """Results of every C, filled batch by batch."""

    w: torch.Tensor  # (n_C, D, K) in the standardised basis
    b: torch.Tensor  # (n_C, K)
    obj: np.ndarray
    gmax: np.ndarray
    n_iter: np.ndarray
    status: list[str]


def fit_logreg_sweep(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    *,
    loss: str = "ce",
    q: float = GCE_Q,
    max_iter: int = LBFGS_MAX_ITER,
    tol: float = LBFGS_TOL,
    history: int = LBFGS_HISTORY,
    precondition: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    memory_budget_bytes: int = MEMORY_BUDGET,
    progress: ProgressFn = no_progress,
) -> LogRegFit:
    """f_C (module docstring) minimised for every C in `c_grid`, x_std standardised with the rows' own
    statistics (``standardize_stats``). C is scikit-learn's: for K = 2 the two-column problem is solved at
    C·BINARY_C_FACTOR, which equals scikit-learn's binary ``LogisticRegression(C)`` (module docstring).

    Batched L-BFGS (``lbfgs``): per-C history (`history` pairs), stop when max|∇f_C| ≤ `tol` in the
    standardised basis (scikit-learn's gtol), at the float precision floor, or after `max_iter` iterations.
    Logits are computed over row chunks of at most `memory_budget_bytes`, and the C's are batched so that the
    optimiser state fits the same budget. Features in `dtype` (float32 default), objective sums in float64.
    """
    qq = loss_q(loss, q)
    cs = np.asarray(list(c_grid), dtype=np.float64)
    if cs.ndim != 1 or cs.size == 0 or not np.all(cs > 0) or not np.all(np.isfinite(cs)):
        raise ValueError("c_grid must be a non-empty list of positive, finite numbers")
    yv = as_labels(y)
    classes, y_idx = np.unique(yv, return_inverse=True)
    k = classes.size
    if k < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {k}")
    c_fit = cs * BINARY_C_FACTOR if k == 2 else cs
    dev = resolve_device(device, x)
    with torch.no_grad():
        data, lam, mean, scale = _prepare(x, yv.size, y_idx, k, qq, dev, dtype, precondition, memory_budget_bytes)
        n, d = data.z1.shape[0], data.z1.shape[1] - 1
        state_bytes = (2 * history + 8) * (d * k + k) * torch.finfo(dtype).bits // 8
        batch = min(cs.size, rows_per_chunk(memory_budget_bytes // 2, state_bytes))
        out = _Sweep(w=torch.empty((cs.size, d, k), dtype=dtype, device=dev),
                     b=torch.empty((cs.size, k), dtype=dtype, device=dev), obj=np.empty(cs.size),
                     gmax=np.empty(cs.size), n_iter=np.zeros(cs.size, dtype=np.int64), status=[""] * cs.size)
        for a in range(0, cs.size, batch):
            sl = slice(a, min(cs.size, a + batch))

            def prog(frac: float, msg: str, _a: int = a, _n: int = sl.stop - a) -> None:
                progress((_a + frac * _n) / cs.size, msg)

            _fit_batch(data, lam, c_fit[sl], out, sl, precondition=precondition, max_iter=max_iter, tol=tol,
                       history=history, progress=prog)
    return LogRegFit(c=cs, weights=out.w, bias=out.b, mean=mean, scale=scale, classes=classes, loss=loss, q=qq,
                     objective=out.obj, grad_max=out.gmax, n_iter=out.n_iter, status=out.status, n_train=n,
                     c_fit=c_fit)


def _prepare(
    x: Any, n_labels: int, y_idx: np.ndarray, k: int, q: float, dev: torch.device, dtype: torch.dtype,
    precondition: bool, budget: int,
) -> tuple[_Data, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(problem, covariance eigenvalues λ or None, mean, scale): x standardised, rotated onto its principal
    axes when `precondition`, with a column of ones for the bias. Intermediates are freed as it goes."""
    xt = as_features(x, dev, dtype)
    n, d = xt.shape
    if n != n_labels:
        raise ValueError(f"{n} rows but {n_labels} labels")
    mean, scale = standardize_stats(xt)
    xs = (xt - mean) / scale
    del xt
    if precondition:
        cov = (xs.T @ xs).to(torch.float64) / n
        lam, vecs = torch.linalg.eigh((cov + cov.T) * 0.5)
        lam = lam.clamp_min(0.0)
        rot = vecs.to(dtype)
        z = matmul(xs, rot)
        del xs
    else:
        lam, rot, z = None, None, xs
    z1 = torch.empty((n, d + 1), dtype=dtype, device=dev)
    z1[:, :d] = z
    z1[:, d] = 1.0
    del z
    data = _Data(z1=z1, y=torch.as_tensor(y_idx, device=dev, dtype=torch.int64), k=k, q=q, rot=rot,
                 row_budget=max(1, budget // 2))
    return data, lam, mean, scale


def _fit_batch(
    data: _Data, lam: torch.Tensor | None, cs: np.ndarray, out: _Sweep, sl: slice, *, precondition: bool,
    max_iter: int, tol: float, history: int, progress: ProgressFn,
) -> None:
    """Fit the C values `cs` together (one L-BFGS batch from U = 0) and write them to out[sl]."""
    z1, k = data.z1, data.k
    n, d, dtype, dev = z1.shape[0], z1.shape[1] - 1, z1.dtype, z1.device
    c_b = torch.as_tensor(cs, device=dev, dtype=torch.float64)
    inv_cn = 1.0 / (c_b * n)  # float64 (n_b,)
    if precondition:
        assert lam is not None
        curv = (1.0 / k) * (1.0 - 1.0 / k)
        sc = ((curv * lam[None, :] + inv_cn[:, None]) ** -PRECONDITION_POWER).to(dtype)  # (n_b, D)
        sb = torch.full((c_b.numel(),), curv**-PRECONDITION_POWER, dtype=dtype, device=dev)
    else:
        sc = torch.ones((c_b.numel(), d), dtype=dtype, device=dev)
        sb = torch.ones(c_b.numel(), dtype=dtype, device=dev)

    def fun(u: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _objective(u, sc[ids], sb[ids], inv_cn[ids], data)

    u0 = torch.zeros((c_b.numel(), d * k + k), dtype=dtype, device=dev)
    u, f_fin, g_fin, it_fin, st_fin = _lbfgs_batch(fun, u0, max_iter=max_iter, tol=tol, history=history,
                                                   first_step_unit=precondition, progress=progress)
    w_pca = sc[:, :, None] * u[:, : d * k].view(-1, d, k)
    out.w[sl] = w_pca if data.rot is None else torch.einsum("ij,cjk->cik", data.rot, w_pca)
    out.b[sl] = sb[:, None] * u[:, d * k :]
    out.obj[sl], out.gmax[sl], out.n_iter[sl] = f_fin, g_fin, it_fin
    out.status[sl] = st_fin
