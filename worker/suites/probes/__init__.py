"""Probe suite: linear probe, weighted k-NN and open-set detection on labelled embeddings.

The contract is shared/METRICS.md, "Probe suite". Z is the N×D embedding matrix, y its labels.

Protocol (``run_probes``):
  * Split: the uploaded ``split`` (0 train / 1 test) when given, else ``stratified_split`` (20 % test,
    seed 0). Hyper-parameters (the L2 strength C) are chosen on a stratified 10 % holdout of **train**;
    the probe is then refitted on all of train and the test split is touched once.
  * Linear probe: features standardised with the fitting rows' statistics (as scikit-learn's StandardScaler,
    ``standardize_stats``); multinomial logistic regression with an unpenalised bias, objective in scikit-learn's
    convention (``fit_logreg_sweep``); every C of the grid is fitted at once by a batched L-BFGS.
  * Weighted k-NN (DINO, Caron et al. 2021, ``eval_knn.py``): cosine similarity, top-k train neighbours,
    vote weight exp(sim / 0.07) (``weighted_knn``).
  * Open-set: some classes are held out as unknown; k-NN and the probe are trained on the known classes'
    train rows; every test row is scored by max cosine to known train rows, max-softmax and energy;
    AUROC and FPR at 95 % TPR with known = positive (``auroc``, ``fpr_at_tpr``).

Accuracies are fractions in [0, 1].

Batched L-BFGS (why not torch.optim.LBFGS on the summed objective). Fitting n_C values of C as one [n_C, D, K]
weight tensor makes every function evaluation one GEMM X·[W_1 … W_nC] instead of n_C small ones. Summing the
n_C objectives and handing the stacked parameters to one torch.optim.LBFGS would give the right minimiser
(the sum is separable, so its minimiser is each C's minimiser) but not a proper L-BFGS for any single C: the
two-loop recursion takes inner products over the whole stacked vector, so curvature pairs of one C steer the
direction of another; one step length is shared, so the worst-conditioned C (the largest) dictates it for
all; and the stopping test is on the summed gradient, so a small C can stop short of its own tolerance while
large C's dominate. Here every C has its own history (s, y, ρ), its own H0 scaling γ = sᵀy / yᵀy, its own
Armijo backtracking line search (quadratic interpolation) and its own stopping test; only the function
evaluations are shared. Finished C's leave the batch, so late iterations cost only the unfinished ones.

Preconditioning (an exact change of variables, same minimiser). Standardised features are rotated to their
principal axes, Z = X_std V (V orthogonal from eigh of X_stdᵀX_std / n, so ‖W‖² is unchanged), and each
C optimises U with W_pca = diag(s) U, s_j = (h λ_j + 1/(C n))^(−1/4), h = (1/K)(1 − 1/K) the softmax
curvature at W = 0 and λ_j the feature covariance eigenvalues. The full scaling (exponent −1/2) would make
the Hessian at W = 0 the identity, but at large C on nearly separable data the curvature collapses onto the
margin rows and that scaling then slows L-BFGS down; the square root of it was the most robust in our
measurements (PRECONDITION_POWER). The reported weights are W = V W_pca in the standardised basis
(scikit-learn's ``coef_.T``), and the stopping test max|∇_W f| ≤ tol is evaluated in that basis, as
scikit-learn's ``gtol`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, SuiteResult, no_progress, resolve_device

try:  # reads memory-mapped rows without mapping them into the RSS (added alongside the spectrum suite)
    from worker.suites.rows import take_rows
except ImportError:  # pragma: no cover - fallback: a plain fancy-index copy

    def take_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array(arr[rows], copy=True)


# --- protocol constants -------------------------------------------------------------------------------

# Splits (METRICS.md): stratified 80/20 when no split is uploaded; C chosen on a stratified 10 % of train.
TEST_FRACTION = 0.2
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0
# C in scikit-learn's convention: minimise C·Σ_i loss_i + ½‖W‖² (bias unpenalised). Default grid: 15 values,
# half a decade apart, 10^-5 … 10^2 (DINOv2 sweeps 45 values in 10^[-6, 5]; pass `c_grid` for that).
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-5.0, 2.0 + 1e-9, 0.5))
# Loss family (comp-sum losses, Mao, Mohri & Zhong, ICML 2023): ℓ = −log p_y (ce),
# (1 − p_y^q)/q with q = 0.7 (gce; Zhang & Sabuncu, NeurIPS 2018), 1 − p_y (mae, = gce at q = 1).
LOSSES = ("ce", "gce", "mae")
GCE_Q = 0.7
# L-BFGS. History 10 as scikit-learn (maxcor). Stopping test max|∇f| ≤ tol as scikit-learn's gtol, but far
# tighter than its default 1e-4: at large C the objective is flat and a gradient test stops far from the
# optimum (digits, C = 100: f 1.8e-4 above the optimum at gtol 1e-6; a 100-class 768-d mixture: test accuracy
# at C ≥ 1 moved by up to 3.7 points between gtol 1e-4 and 1e-8, 1.9 at 1e-6, 0.1 at 1e-7), and two solvers
# stopped early on different paths do not agree "at equal C". In float32 a fit also stops when its line search
# can no longer lower f (the precision floor), often before 1e-7.
LBFGS_HISTORY = 10
LBFGS_TOL = 1e-7
LBFGS_MAX_ITER = 1000
ARMIJO_C1 = 1e-4
LINE_SEARCH_MAX_STEPS = 25
# Preconditioner exponent: s_j = (h λ_j + 1/(C n))^(−1/4), the square root of the full inverse-square-root
# scaling (module docstring). L-BFGS iterations summed over the default 15-value grid, default tol, float32:
# digits (1 437 x 64, 10 classes): none 817, exponent 1/2: 1 426, 1/4: 676; the benchmark's 100-class mixture
# (3 600 x 768): none 742, 1/2: 755, 1/4: 596.
PRECONDITION_POWER = 0.25
CURVATURE_EPS = 1e-10  # pairs with sᵀy ≤ eps·‖s‖‖y‖ are not stored (never for the strictly convex CE + L2)
# The precision floor: a rejected trial step that changes f by at most 0.1·eps(dtype)·|f| (1.2e-8 relative in
# float32) ends the fit. In float32 the row-wise rounding of the loss leaves f noisy at ~1e-9 relative, where
# backtracking would otherwise burn 2-3 evaluations per iteration without a resolvable decrease.
FLOOR_RTOL_EPS = 0.1
# Weighted k-NN (DINO, Caron et al. ICCV 2021, eval_knn.py): T = 0.07, k ∈ {10, 20, 100, 200}.
KNN_K: tuple[int, ...] = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07
TOPK = 5
# Open-set: default share of classes held out as unknown (at least one, at least two known ones remain);
# energy score logsumexp(logits / T) · T with T = 1 (Liu et al., NeurIPS 2020); FPR at 95 % TPR.
OPENSET_SHARE = 0.2
OPENSET_MIN_CLASSES = 3
OPENSET_TPR = 0.95
ENERGY_T = 1.0
# Implementation constants.
MEMORY_BUDGET = 512 << 20  # bytes of working memory (similarity blocks, logits) beyond the data itself
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default
LOAD_CHUNK_ROWS = 65_536
CONFUSION_MAX_CLASSES = 256  # larger confusion matrices are reported as their largest off-diagonal cells
CONFUSION_TOP_CELLS = 1000


# --- splits -------------------------------------------------------------------------------------------


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; on the CPU through numpy's BLAS (OpenBLAS), zero-copy.

    torch's CPU wheels call MKL, whose sgemm runs well below OpenBLAS's on AMD processors: 84-91 vs 133-154
    GFLOP/s for the probe's 45 000 x 768 x 1 500 products on a 2-core EPYC CI machine; on a 2-core Xeon
    (Sapphire Rapids) OpenBLAS still led, 292 vs 256. Same product, another summation order (results agree
    to float rounding)."""
    if a.device.type == "cpu" and b.device.type == "cpu" and a.dtype == b.dtype and a.dtype in _NUMPY_GEMM_DTYPES:
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


_NUMPY_GEMM_DTYPES = (torch.float32, torch.float64)


def stratified_split(
    labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted int64, stratified by label.

    Per class c with n_c rows (classes in sorted order, one generator ``np.random.default_rng(seed)``):
    the rows are permuted with ``rng.permutation`` and the first  t_c = round(test_fraction·n_c)  go to test,
    clipped to [1, n_c − 1] when n_c ≥ 2 so that every class is on both sides; a class with one row stays in
    train. Deterministic for a seed; proportions are preserved to within one row per class.
    """
    y = _as_labels(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_c = idx.size
        if n_c < 2:
            continue
        t_c = min(max(int(np.floor(test_fraction * n_c + 0.5)), 1), n_c - 1)
        test_parts.append(rng.permutation(idx)[:t_c])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test.astype(np.int64)


def resolve_split(
    labels: np.ndarray, split: np.ndarray | None = None, *, seed: int = SPLIT_SEED,
    test_fraction: float = TEST_FRACTION,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train_idx, test_idx, source): the uploaded split (0 train / 1 test) if given, else stratified."""
    y = _as_labels(labels)
    if split is None:
        tr, te = stratified_split(y, test_fraction, seed)
        return tr, te, f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%}, seed {seed}"
    s = np.asarray(split).ravel()
    if s.size != y.size:
        raise ValueError(f"split has {s.size} entries for {y.size} rows")
    bad = ~np.isin(s, (0, 1))
    if bad.any():
        raise ValueError(f"split must hold 0 (train) or 1 (test) only; found {np.unique(s[bad])[:5].tolist()}")
    tr, te = np.flatnonzero(s == 0).astype(np.int64), np.flatnonzero(s == 1).astype(np.int64)
    if tr.size == 0 or te.size == 0:
        raise ValueError(f"the uploaded split has {tr.size} train and {te.size} test rows; both must be > 0")
    return tr, te, "uploaded"


# --- ranking metrics ----------------------------------------------------------------------------------


def auroc(scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool]) -> float:
    """Area under the ROC curve from ranks (Mann–Whitney U), ties counted one half:

        AUROC = (Σ_{i ∈ pos} r_i − P(P + 1)/2) / (P·N),   r = 1-based ranks of the scores, ties averaged.

    Equals ``sklearn.metrics.roc_auc_score(positive, scores)``. Higher score = more positive. NaN when
    one class is empty.
    """
    s, pos = _scores_labels(scores, positive)
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    first = np.r_[True, ss[1:] != ss[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], ss.size]  # exclusive
    group = np.cumsum(first) - 1
    avg_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 … end
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = avg_rank[group]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fpr_at_tpr(
    scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool], tpr: float = OPENSET_TPR
) -> float:
    """False-positive rate at the largest threshold t whose true-positive rate reaches `tpr`:

        TPR(t) = #{pos: s ≥ t} / P,  FPR(t) = #{neg: s ≥ t} / N,  FPR@tpr = FPR(max{t : TPR(t) ≥ tpr}).

    Thresholds are the distinct scores, as in ``sklearn.metrics.roc_curve(drop_intermediate=False)``: the
    value is fpr[first index with tpr ≥ `tpr`]. NaN when one class is empty.
    """
    s, pos = _scores_labels(scores, positive)
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    ss, pp = s[order], pos[order]
    last_of_group = np.r_[ss[1:] != ss[:-1], True]  # cumulative counts are taken at the end of each tie group
    tps = np.cumsum(pp)[last_of_group]
    fps = np.cumsum(~pp)[last_of_group]
    hit = np.flatnonzero(tps / n_pos >= tpr)
    return float(fps[hit[0]] / n_neg)


# --- linear probe -------------------------------------------------------------------------------------


@dataclass
class LogRegFit:
    """Multinomial logistic regressions, one per C, on standardised features.

    weights[c] (D×K) and bias[c] (K) act on standardised features x_std = (x − mean) / scale:
    logits = x_std · W + b. ``weights[c].T`` is scikit-learn's ``coef_`` and ``bias[c]`` its ``intercept_``.
    """

    c: np.ndarray  # (n_C,)
    weights: torch.Tensor  # (n_C, D, K)
    bias: torch.Tensor  # (n_C, K)
    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    classes: np.ndarray  # (K,) label values, sorted; column k of the logits is classes[k]
    loss: str
    q: float
    objective: np.ndarray  # (n_C,) final f = mean loss + ‖W‖²/(2Cn), float64
    grad_max: np.ndarray  # (n_C,) final max|∇f| in the standardised basis
    n_iter: np.ndarray  # (n_C,) L-BFGS iterations
    status: list[str]  # per C: converged | precision floor | line search | max_iter
    n_train: int

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
        x = _as_tensor(x, self.weights.device, self.weights.dtype)
        n_c, d, k = self.weights.shape
        w_all = self.weights.permute(1, 0, 2).reshape(d, n_c * k)
        rows = max(1, memory_budget_bytes // max(1, 4 * n_c * k + 4 * d))
        out = []
        for a in range(0, x.shape[0], rows):
            xs = (x[a : a + rows] - self.mean) / self.scale
            lg = matmul(xs, w_all).view(-1, n_c, k) + self.bias
            out.append(lg.argmax(dim=2).T.cpu())
        return torch.cat(out, dim=1).numpy() if out else np.zeros((n_c, 0), dtype=np.int64)

    def standardize(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = _as_tensor(x, self.weights.device, self.weights.dtype)
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


def comp_sum_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", q: float = GCE_Q) -> torch.Tensor:
    """Per-row loss of the comp-sum family (Mao, Mohri & Zhong, ICML 2023) on logits (…, K), labels (…):

        ce:  −log p_y            gce: (1 − p_y^q) / q,  q = 0.7 (Zhang & Sabuncu 2018)      mae: 1 − p_y

    with p = softmax(logits). (mae is gce at q = 1; Ghosh et al.'s ‖e_y − p‖₁ = 2(1 − p_y) is twice this,
    which would halve the effective C.)
    """
    qq = _loss_q(loss, q)
    lpy = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -lpy if qq == 0 else (1 - torch.exp(qq * lpy)) / qq


@dataclass
class _Data:
    """A fitting problem after standardisation and rotation, shared by every C of a batch."""

    z1: torch.Tensor  # (n, D + 1) rotated standardised features and a column of ones (the bias rides in the GEMM)
    y: torch.Tensor  # (n,) class indices
    k: int
    q: float  # 0 = cross-entropy
    rot: torch.Tensor | None  # V (D, D), None when not rotated
    row_budget: int  # bytes for one chunk of logits


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
    """L2-regularised multinomial logistic regression for every C in `c_grid` at once.

    Objective per C, in scikit-learn's convention (``LogisticRegression(C=C)``, lbfgs, multinomial):

        f_C(W, b) = (1/n) Σ_i ℓ(x_std,i W + b, y_i) + ‖W‖² / (2 C n)     (= [C Σ_i ℓ_i + ½‖W‖²] / (C n))

    with W (D×K, one column per class, all penalised), b (K) unpenalised, x_std standardised with the rows'
    own statistics (``standardize_stats``) and ℓ from ``comp_sum_loss``. For K = 2 scikit-learn fits a
    binary model with one weight vector instead: this multinomial fit at C equals its binary fit at 2C.

    Minimised by a batched L-BFGS (module docstring): per-C history (`history` pairs), H0 = γI, Armijo
    backtracking, stop when max|∇f_C| ≤ `tol` in the standardised basis (scikit-learn's gtol), when the line
    search cannot decrease f any more (the float precision floor), or after `max_iter` iterations. Gradients are
    analytic (∂ℓ/∂logits = w_i (p − e_y), w_i = p_y^q for gce/mae, 1 for ce); logits are computed over row
    chunks of at most `memory_budget_bytes`, and the C's are batched so that the optimiser state fits the same
    budget. Features in `dtype` (float32 default), objective sums in float64.
    """
    qq = _loss_q(loss, q)
    cs = np.asarray(list(c_grid), dtype=np.float64)
    if cs.ndim != 1 or cs.size == 0 or not np.all(cs > 0) or not np.all(np.isfinite(cs)):
        raise ValueError("c_grid must be a non-empty list of positive, finite numbers")
    yv = _as_labels(y)
    classes, y_idx = np.unique(yv, return_inverse=True)
    k = classes.size
    if k < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {k}")
    dev = resolve_device(device, x)
    with torch.no_grad():
        xt = _as_tensor(x, dev, dtype)
        n, d = xt.shape
        if n != yv.size:
            raise ValueError(f"{n} rows but {yv.size} labels")
        mean, scale = standardize_stats(xt)
        xs = (xt - mean) / scale
        del xt
        curv = (1.0 / k) * (1.0 - 1.0 / k)
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
        data = _Data(z1=z1, y=torch.as_tensor(y_idx, device=dev, dtype=torch.int64), k=k, q=qq, rot=rot,
                     row_budget=max(1, memory_budget_bytes // 2))
        p = d * k + k
        state_bytes = (2 * history + 8) * p * torch.finfo(dtype).bits // 8
        batch = max(1, min(cs.size, (memory_budget_bytes // 2) // max(1, state_bytes)))
        w_out = torch.empty((cs.size, d, k), dtype=dtype, device=dev)
        b_out = torch.empty((cs.size, k), dtype=dtype, device=dev)
        obj = np.empty(cs.size)
        gmax = np.empty(cs.size)
        n_iter = np.zeros(cs.size, dtype=np.int64)
        status: list[str] = [""] * cs.size
        for a in range(0, cs.size, batch):
            sl = slice(a, min(cs.size, a + batch))
            c_b = torch.as_tensor(cs[sl], device=dev, dtype=torch.float64)
            inv_cn = 1.0 / (c_b * n)  # float64 (n_b,)
            if precondition:
                sc = ((curv * lam[None, :] + inv_cn[:, None]) ** -PRECONDITION_POWER).to(dtype)  # (n_b, D)
                sb = torch.full((c_b.numel(),), curv**-PRECONDITION_POWER, dtype=dtype, device=dev)
            else:
                sc = torch.ones((c_b.numel(), d), dtype=dtype, device=dev)
                sb = torch.ones(c_b.numel(), dtype=dtype, device=dev)

            def fun(u: torch.Tensor, ids: torch.Tensor, _sc=sc, _sb=sb, _ic=inv_cn):
                return _objective(u, _sc[ids], _sb[ids], _ic[ids], data)

            def prog(frac: float, msg: str, _a=a, _n=c_b.numel()) -> None:
                progress((_a + frac * _n) / cs.size, msg)

            u0 = torch.zeros((c_b.numel(), p), dtype=dtype, device=dev)
            res = _lbfgs_batch(fun, u0, max_iter=max_iter, tol=tol, history=history,
                               first_step_unit=precondition, progress=prog)
            u, f_fin, g_fin, it_fin, st_fin = res
            w_pca = sc[:, :, None] * u[:, : d * k].view(-1, d, k)
            w_out[sl] = w_pca if rot is None else torch.einsum("ij,cjk->cik", rot, w_pca)
            b_out[sl] = sb[:, None] * u[:, d * k :]
            obj[sl], gmax[sl], n_iter[sl] = f_fin, g_fin, it_fin
            status[sl] = st_fin
    return LogRegFit(c=cs, weights=w_out, bias=b_out, mean=mean, scale=scale, classes=classes,
                     loss=loss, q=qq, objective=obj, grad_max=gmax, n_iter=n_iter, status=status, n_train=n)


def _objective(
    u: torch.Tensor, sc: torch.Tensor, sb: torch.Tensor, inv_cn: torch.Tensor, data: _Data
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f (a,) float64, ∇_u f (a, P), max|∇_W f| (a,) in the standardised basis, for a problems at once."""
    a = u.shape[0]
    z1, k = data.z1, data.k
    n, d = z1.shape[0], z1.shape[1] - 1
    dt = z1.dtype
    w = sc[:, :, None] * u[:, : d * k].view(a, d, k)  # (a, D, K)
    b = sb[:, None] * u[:, d * k :]  # (a, K)
    w_all = torch.cat([w.permute(1, 0, 2).reshape(d, a * k), b.reshape(1, a * k)])  # (D + 1, a K): bias last
    g_all = torch.zeros((d + 1, a * k), dtype=dt, device=z1.device)
    loss_sum = torch.zeros(a, dtype=torch.float64, device=z1.device)
    rows = max(1, data.row_budget // (z1.element_size() * (a * k + d + 1) * 2))
    for s in range(0, n, rows):
        zr = z1[s : s + rows]
        r = zr.shape[0]
        idx = data.y[s : s + rows].view(r, 1, 1).expand(r, a, 1)
        # softmax in place on the fresh logits, one exp per element (log_softmax then exp took two):
        # log p_y = l_y − m − log Σ exp(l − m), m the row max
        logits = matmul(zr, w_all).view(r, a, k)
        l_y = logits.gather(2, idx).squeeze(2)  # (r, a)
        m = logits.amax(dim=2, keepdim=True)
        grad = logits.sub_(m).exp_()
        total = grad.sum(dim=2, keepdim=True)
        grad.div_(total)  # p
        _flush_subnormal(grad)
        lpy = l_y - m.squeeze(2) - total.squeeze(2).log()
        if data.q == 0:
            loss_sum += (-lpy).sum(dim=0, dtype=torch.float64)
        else:
            pyq = torch.exp(data.q * lpy)
            loss_sum += ((1 - pyq) / data.q).sum(dim=0, dtype=torch.float64)
        grad.scatter_add_(2, idx, torch.full_like(idx, -1, dtype=dt))  # p − e_y
        if data.q != 0:
            grad.mul_(pyq.unsqueeze(2))  # p_y^q (p − e_y)
            grad.masked_fill_(grad.abs() < _FLOAT_MIN[grad.dtype], 0.0)  # products of small factors, either sign
        g_all += matmul(zr.T, grad.view(r, a * k))  # last row: Σ_rows grad = ∇_b
    g_w, g_b = g_all[:d], g_all[d].view(a, k)
    inv_cn_t = inv_cn.to(dt)
    f = loss_sum / n + 0.5 * inv_cn * (w.to(torch.float64) ** 2).sum(dim=(1, 2))
    g_w = g_w.view(d, a, k).permute(1, 0, 2) / n + inv_cn_t[:, None, None] * w  # (a, D, K), ∇_W in z's basis
    g_b = g_b / n
    g_std = g_w if data.rot is None else torch.einsum("ij,cjk->cik", data.rot, g_w)
    gmax = torch.maximum(g_std.abs().amax(dim=(1, 2)), g_b.abs().amax(dim=1)).to(torch.float64)
    grad_u = torch.cat([(sc[:, :, None] * g_w).reshape(a, d * k), sb[:, None] * g_b], dim=1)
    return f, grad_u, gmax


_FLOAT_MIN = {dt: torch.finfo(dt).tiny for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _flush_subnormal(p: torch.Tensor) -> None:
    """Set probabilities below the smallest normal float (exp(l − max) < 1.2e-38 in float32) to exactly 0, in
    place. At large C on nearly separable data most wrong-class probabilities underflow into subnormals, and
    a GEMM fed subnormals runs ~100x slower on x86 (microcode assists: 3.4 vs 334 GFLOP/s measured for the
    backward product on a 2-core Xeon; the full 50 000-row CPU sweep spent 75 % of its time there). Their
    contribution to any gradient entry is < 1e-38 — what flush-to-zero hardware modes would do anyway."""
    torch.nn.functional.threshold_(p, _FLOAT_MIN[p.dtype], 0.0)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (n, P) matrices without an (n, P) temporary. On the CPU one BLAS dot per
    row (n is the handful of C values in a batch): torch.bmm of (n,1,P)·(n,P,1), the obvious one-call form,
    took 9.8 ms for n = 15, P = 76 900 on a 2-core Xeon against 0.35 ms for the loop (a quarter of the whole
    CPU sweep's time went there)."""
    if a.device.type == "cpu":
        return torch.stack([torch.dot(a[i], b[i]) for i in range(a.shape[0])]) if a.shape[0] else a.new_zeros(0)
    return torch.linalg.vecdot(a, b)


def _add_scaled_rows(y: torch.Tensor, alpha: torch.Tensor, x: torch.Tensor) -> None:
    """y[i] += alpha[i] * x[i] in place, one pass (a batched rank-1 update)."""
    y.unsqueeze(1).baddbmm_(alpha.to(y.dtype).view(-1, 1, 1), x.unsqueeze(1))


def _lbfgs_batch(
    fun: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    history: int,
    first_step_unit: bool,
    progress: Callable[[float, str], None],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Independent L-BFGS runs for the rows of x0 (n_b, P); fun(x, ids) -> (f, ∇f, max|∇f|) for problems ids.

    Per problem: two-loop recursion over its own (s, y, ρ) ring (ρ = 0 marks an unusable pair), H0 = γI with
    γ = sᵀy/yᵀy of its last stored pair, Armijo backtracking f(x + t d) ≤ f(x) + c1·t·∇fᵀd from t = 1
    (first iteration: t = 1 with a preconditioner, else min(1, 1/‖∇f‖₁) as torch.optim.LBFGS), quadratic
    interpolation clipped to [0.1 t, 0.5 t]. A problem leaves the batch when converged (max|∇f| ≤ tol), at the
    precision floor (a rejected trial moved f by ≤ FLOOR_RTOL_EPS·eps·|f|, or an accepted step did not lower
    f), when its line search fails after LINE_SEARCH_MAX_STEPS trials, or at max_iter.
    """
    nb, p = x0.shape
    dev, dt = x0.device, x0.dtype
    floor_rtol = FLOOR_RTOL_EPS * torch.finfo(dt).eps
    m = max(1, history)
    ids = torch.arange(nb, device=dev)
    x = x0.clone()
    f, g, gm = fun(x, ids)
    s_hist = torch.zeros((m, nb, p), dtype=dt, device=dev)  # slot-major: s_hist[j] is one contiguous (nb, P) block
    y_hist = torch.zeros((m, nb, p), dtype=dt, device=dev)
    rho = torch.zeros((nb, m), dtype=dt, device=dev)
    gamma = torch.ones(nb, dtype=dt, device=dev)
    out_x = torch.empty_like(x0)
    out_f = np.zeros(nb)
    out_g = np.zeros(nb)
    out_it = np.zeros(nb, dtype=np.int64)
    out_status = ["max_iter"] * nb
    n_pairs = 0

    def finish(mask: torch.Tensor, why: str, it: int) -> None:
        for j in torch.nonzero(mask).flatten().tolist():
            pid = int(ids[j])
            out_x[pid] = x[j]
            out_f[pid] = float(f[j])
            out_g[pid] = float(gm[j])
            out_it[pid] = it
            out_status[pid] = why

    def keep(mask: torch.Tensor) -> None:
        nonlocal ids, x, f, g, gm, s_hist, y_hist, rho, gamma
        ids, x, f, g, gm = ids[mask], x[mask], f[mask], g[mask], gm[mask]
        s_hist, y_hist, rho, gamma = s_hist[:, mask], y_hist[:, mask], rho[mask], gamma[mask]

    done = gm <= tol
    if bool(done.any()):
        finish(done, "converged", 0)
        keep(~done)
    it = 0
    for it in range(1, max_iter + 1):
        if ids.numel() == 0:
            break
        # two-loop recursion, newest pair first
        order = [(n_pairs - 1 - j) % m for j in range(min(n_pairs, m))]
        qv = g.clone()
        alphas = []
        for j in order:
            al = rho[:, j] * _rowdot(s_hist[j], qv)
            _add_scaled_rows(qv, -al, y_hist[j])
            alphas.append(al)
        r = gamma[:, None] * qv
        for j, al in zip(reversed(order), reversed(alphas), strict=True):
            be = rho[:, j] * _rowdot(y_hist[j], r)
            _add_scaled_rows(r, al - be, s_hist[j])
        d = -r
        gd = (g * d).sum(dim=1).to(torch.float64)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        t = torch.ones(ids.numel(), dtype=torch.float64, device=dev)
        if it == 1 and not first_step_unit:
            t = torch.clamp(1.0 / g.abs().sum(dim=1).to(torch.float64), max=1.0)
        if bool(bad.any()):  # not a descent direction: restart that problem from steepest descent
            d[bad] = -g[bad]
            gd[bad] = -(g[bad].to(torch.float64) ** 2).sum(dim=1)
            rho[bad] = 0
            gamma[bad] = 1
        # batched backtracking line search
        x_new, f_new, g_new, gm_new = torch.empty_like(x), torch.empty_like(f), torch.empty_like(g), torch.empty_like(gm)
        pend = torch.arange(ids.numel(), device=dev)
        failed = torch.zeros(ids.numel(), dtype=torch.bool, device=dev)
        floor = torch.zeros(ids.numel(), dtype=torch.bool, device=dev)
        for _ in range(LINE_SEARCH_MAX_STEPS):
            xt = x[pend] + t[pend, None].to(dt) * d[pend]
            ft, gt, gmt = fun(xt, ids[pend])
            ok = (ft <= f[pend] + ARMIJO_C1 * t[pend] * gd[pend]) & torch.isfinite(ft)
            acc = pend[ok]
            x_new[acc], f_new[acc], g_new[acc], gm_new[acc] = xt[ok], ft[ok], gt[ok], gmt[ok]
            # a rejected step that moved f by less than the rounding floor: no decrease is resolvable any more
            at_floor = ~ok & torch.isfinite(ft) & ((ft - f[pend]).abs() <= floor_rtol * f[pend].abs())
            floor[pend[at_floor]] = True
            keep_ls = ~ok & ~at_floor
            rej, ft_rej = pend[keep_ls], ft[keep_ls]
            if rej.numel() == 0:
                pend = rej
                break
            tt = t[rej]
            curv = 2.0 * (ft_rej - f[rej] - gd[rej] * tt)
            t_q = torch.where(torch.isfinite(curv) & (curv > 0), -gd[rej] * tt * tt / curv, 0.5 * tt)
            t[rej] = torch.minimum(torch.maximum(t_q, 0.1 * tt), 0.5 * tt)
            pend = rej
        failed[pend] = True
        if bool(failed.any()):
            finish(failed, "line search", it - 1)
        if bool(floor.any()):
            finish(floor, "precision floor", it - 1)
        failed |= floor
        # curvature pairs
        ok = ~failed
        s_vec = x_new - x
        y_vec = g_new - g
        sy = (s_vec * y_vec).sum(dim=1)
        yy = (y_vec * y_vec).sum(dim=1)
        usable = ok & (sy > CURVATURE_EPS * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (yy > 0)
        slot = n_pairs % m
        s_hist[slot] = torch.where(usable[:, None], s_vec, 0.0)
        y_hist[slot] = torch.where(usable[:, None], y_vec, 0.0)
        rho[:, slot] = torch.where(usable, 1.0 / torch.where(usable, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(usable, sy / torch.where(usable, yy, torch.ones_like(yy)), gamma)
        n_pairs += 1
        stalled = ok & ~(f_new < f)
        x = torch.where(ok[:, None], x_new, x)
        f = torch.where(ok, f_new, f)
        g = torch.where(ok[:, None], g_new, g)
        gm = torch.where(ok, gm_new, gm)
        conv = ok & (gm <= tol)
        if bool(conv.any()):
            finish(conv, "converged", it)
        stalled &= ~conv
        if bool(stalled.any()):
            finish(stalled, "precision floor", it)
        gone = failed | conv | stalled
        if bool(gone.any()):
            keep(~gone)
        n_done = nb - ids.numel()
        progress(max(n_done / nb, it / max_iter), f"L-BFGS iteration {it}: {n_done}/{nb} C values done")
    if ids.numel():
        finish(torch.ones(ids.numel(), dtype=torch.bool, device=dev), "max_iter", it)
    return out_x, out_f, out_g, out_it, out_status


@dataclass
class LinearProbeResult:
    """A C sweep on a holdout of train, then the refit on all of train at the chosen C."""

    c_grid: np.ndarray
    holdout_top1: np.ndarray  # (n_C,) accuracy of each C on the holdout
    best_c: float
    best_index: int
    sweep: LogRegFit  # fitted on train minus holdout
    final: LogRegFit  # fitted on all of train at best_c
    n_holdout: int


def select_c(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = SPLIT_SEED,
    device: str | torch.device | None = None,
    memory_budget_bytes: int = MEMORY_BUDGET,
    progress: ProgressFn = no_progress,
    **fit_kwargs: Any,
) -> LinearProbeResult:
    """Choose C on a stratified `holdout_fraction` of train (``stratified_split`` with `seed`), refit on all
    of train. The best C has the highest holdout top-1 accuracy; ties go to the smaller C (stronger
    regularisation)."""
    y = _as_labels(y_train)
    dev = resolve_device(device, x_train)
    xt = _as_tensor(x_train, dev, fit_kwargs.get("dtype", torch.float32))
    fit_idx, hold_idx = stratified_split(y, holdout_fraction, seed)
    cs = np.sort(np.asarray(list(c_grid), dtype=np.float64))
    ti = torch.as_tensor(fit_idx, device=dev)
    sweep = fit_logreg_sweep(xt[ti], y[fit_idx], cs, device=dev, memory_budget_bytes=memory_budget_bytes,
                             progress=lambda f, m: progress(0.85 * f, "C sweep: " + m), **fit_kwargs)
    if hold_idx.size:
        pred = sweep.predict(xt[torch.as_tensor(hold_idx, device=dev)], memory_budget_bytes=memory_budget_bytes)
        hold_top1 = (sweep.classes[pred] == y[hold_idx][None, :]).mean(axis=1)
    else:  # every class has a single row: nothing to hold out, keep the middle of the grid
        hold_top1 = np.full(cs.size, np.nan)
    best = int(np.nanargmax(hold_top1)) if np.isfinite(hold_top1).any() else cs.size // 2
    final = fit_logreg_sweep(xt, y, [cs[best]], device=dev, memory_budget_bytes=memory_budget_bytes,
                             progress=lambda f, m: progress(0.85 + 0.15 * f, "refit: " + m), **fit_kwargs)
    return LinearProbeResult(c_grid=cs, holdout_top1=hold_top1, best_c=float(cs[best]), best_index=best,
                             sweep=sweep, final=final, n_holdout=int(hold_idx.size))


def classification_metrics(
    logits: torch.Tensor | np.ndarray, y_true: np.ndarray, classes: np.ndarray, all_labels: np.ndarray
) -> dict[str, Any]:
    """top-1, top-5 (ties in the logits broken towards the lower class index), balanced accuracy (mean recall
    over the classes present in y_true), per-class recall and the confusion matrix [true, predicted] over
    `all_labels` (sorted label values; classes the model never saw count as errors)."""
    lg = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    ranked = _rank(lg, min(TOPK, lg.shape[1]))  # indices into classes
    pred_labels = classes[ranked]
    y = _as_labels(y_true)
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


# --- weighted k-NN ------------------------------------------------------------------------------------


@dataclass
class KnnResult:
    """Weighted k-NN votes of each query, per requested k.

    ranked[k] (m, min(5, n_classes)): class indices (into ``classes``) by decreasing vote, −1 where fewer
    classes got votes. max_similarity (m,): cosine similarity to the nearest train row.
    """

    k: list[int]
    k_effective: list[int]
    classes: np.ndarray
    ranked: dict[int, np.ndarray]
    max_similarity: np.ndarray
    query_chunk: int
    train_chunk: int
    scores: dict[int, np.ndarray] | None = None

    def accuracy(self, labels: np.ndarray, k: int, top: int = 1) -> float:
        y = _as_labels(labels)
        pos = np.searchsorted(self.classes, y)
        pos = np.where((pos < self.classes.size) & (self.classes[np.minimum(pos, self.classes.size - 1)] == y),
                       pos, -2)
        return float(np.mean((self.ranked[k][:, :top] == pos[:, None]).any(axis=1)))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖, 1e-12) per row (torch.nn.functional.normalize)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)


def weighted_knn(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray,
    query_x: np.ndarray | torch.Tensor,
    *,
    ks: Sequence[int] = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    classes: np.ndarray | None = None,
    device: str | torch.device | None = None,
    memory_budget_bytes: int = MEMORY_BUDGET,
    query_chunk: int | None = None,
    train_chunk: int | None = None,
    return_scores: bool = False,
    progress: ProgressFn = no_progress,
) -> KnnResult:
    """Weighted k-NN classifier of DINO (Caron et al. ICCV 2021, ``eval_knn.py``, after Wu et al. 2018):

        ẑ = z / ‖z‖,  sim(q, t) = ẑ_q · ẑ_t,  N_k(q) = the k train rows of largest sim,
        score_c(q) = Σ_{t ∈ N_k(q), y_t = c} exp(sim(q, t) / T),   T = 0.07,

    classes ranked by decreasing score (equal scores: lower class index first, a stable sort; classes with no
    vote are never ranked, −1). k > n_train is clamped to n_train (``k_effective``).

    Memory: queries are processed in chunks of `query_chunk` rows and train rows in blocks of `train_chunk`
    (both derived from `memory_budget_bytes` when None: the float32 similarity block plus top-k buffers stay
    under it; train is split only when a 64-row query chunk would not fit). One top-max(k) per block, merged
    into a running top-max(k); every k is read from its sorted prefix. Tie-breaking: exactly equal
    similarities at the k-th place are resolved by ``torch.topk``'s implementation-defined order (it may
    differ between devices and chunkings); with continuous features this does not occur.
    """
    dev = resolve_device(device, train_x)
    ty = _as_labels(train_y)
    cls = np.unique(ty) if classes is None else np.asarray(classes)
    if not np.all(np.isin(ty, cls)):
        raise ValueError("train labels must all be in `classes`")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ks_req = [int(k) for k in ks]
    if any(k < 1 for k in ks_req):
        raise ValueError(f"k must be ≥ 1, got {ks_req}")
    with torch.no_grad():
        tx = l2_normalize(_as_tensor(train_x, dev, torch.float32))
        qx_all = _as_tensor(query_x, dev, torch.float32)
        n_t, d = tx.shape
        if n_t == 0:
            raise ValueError("k-NN needs at least one train row")
        ty_idx = torch.as_tensor(np.searchsorted(cls, ty), device=dev, dtype=torch.int64)
        k_eff = [min(k, n_t) for k in ks_req]
        kmax = max([1, *k_eff])
        n_c = cls.size
        per_query = 12 * 3 * kmax + 4 * n_c * 2 + 4 * d  # top-k values/indices (running, block, merged), votes
        if train_chunk is None:
            fits = memory_budget_bytes // (4 * n_t + per_query)
            train_chunk = n_t if fits >= 64 else max(kmax, (memory_budget_bytes // 64 - per_query) // 4)
        train_chunk = max(1, min(int(train_chunk), n_t))
        if query_chunk is None:
            query_chunk = max(1, memory_budget_bytes // (4 * train_chunk + per_query))
        query_chunk = max(1, int(query_chunk))
        m = qx_all.shape[0]
        ranked = {k: np.empty((m, min(TOPK, n_c)), dtype=np.int64) for k in ks_req}
        scores_out = {k: np.empty((m, n_c)) for k in ks_req} if return_scores else None
        max_sim = np.empty(m)
        for a in range(0, m, query_chunk):
            qx = l2_normalize(qx_all[a : a + query_chunk])
            best_v = best_i = None
            for s in range(0, n_t, train_chunk):
                sim = matmul(qx, tx[s : s + train_chunk].T)
                v, i = torch.topk(sim, min(kmax, sim.shape[1]), dim=1, largest=True, sorted=True)
                i += s
                if best_v is None:
                    best_v, best_i = v, i
                else:
                    v_cat, i_cat = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
                    best_v, pos = torch.topk(v_cat, min(kmax, v_cat.shape[1]), dim=1, largest=True, sorted=True)
                    best_i = i_cat.gather(1, pos)
            assert best_v is not None and best_i is not None
            max_sim[a : a + qx.shape[0]] = best_v[:, 0].double().cpu().numpy()
            weights = torch.exp(best_v / temperature)
            nb_lab = ty_idx[best_i]
            for k_r, k_e in zip(ks_req, k_eff, strict=True):
                sc = torch.zeros((qx.shape[0], n_c), dtype=torch.float32, device=dev)
                sc.scatter_add_(1, nb_lab[:, :k_e], weights[:, :k_e])
                ranked[k_r][a : a + qx.shape[0]] = _rank(sc, min(TOPK, n_c), drop_zero=True)
                if scores_out is not None:
                    scores_out[k_r][a : a + qx.shape[0]] = sc.double().cpu().numpy()
            progress(min(1.0, (a + qx.shape[0]) / max(m, 1)), f"k-NN: {a + qx.shape[0]}/{m} queries")
    return KnnResult(k=ks_req, k_effective=k_eff, classes=cls, ranked=ranked, max_similarity=max_sim,
                     query_chunk=query_chunk, train_chunk=train_chunk, scores=scores_out)


def max_cosine_similarity(
    train_x: np.ndarray | torch.Tensor, query_x: np.ndarray | torch.Tensor, **kwargs: Any
) -> np.ndarray:
    """max_t ẑ_q · ẑ_t for every query (the open-set k-NN score), chunked as ``weighted_knn``."""
    n_t = int(train_x.shape[0])
    res = weighted_knn(train_x, np.zeros(n_t, dtype=np.int64), query_x, ks=(1,), **kwargs)
    return res.max_similarity


# --- open set -----------------------------------------------------------------------------------------


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
    """Known-ness scores from a probe's logits: msp = max softmax (Hendrycks & Gimpel, ICLR 2017);
    energy = T·logsumexp(logits / T), T = 1 (the negative free energy, Liu et al., NeurIPS 2020)."""
    lg = logits.detach().to(torch.float64)
    return {"msp": torch.softmax(lg, dim=1).amax(dim=1).cpu().numpy(),
            "energy": (ENERGY_T * torch.logsumexp(lg / ENERGY_T, dim=1)).cpu().numpy()}


# --- the suite ----------------------------------------------------------------------------------------


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
    n, d = _shape(embeddings)
    y = _as_labels(labels)
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
    x_tr = _load_rows(embeddings, tr, dev)
    x_te = _load_rows(embeddings, te, dev)

    # linear probe
    lp = select_c(x_tr, y_tr, cs, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                  progress=lambda f, m: progress(0.02 + 0.43 * f, "linear probe: " + m), **fit_kw)
    test_logits = _chunked_logits(lp.final, x_te, memory_budget_bytes)
    cm = classification_metrics(test_logits, y_te, lp.final.classes, all_labels)
    metrics: dict[str, float] = {
        "linear_top1": cm["top1"],
        "linear_top5": cm["top5"],
        "linear_balanced_acc": cm["balanced_acc"],
        "linear_best_c": lp.best_c,
    }
    if lp.best_index in (0, cs.size - 1) and cs.size > 1:
        warnings.append(f"the chosen C = {lp.best_c:g} is at the edge of the grid "
                        f"[{cs[0]:g}, {cs[-1]:g}]: widen c_grid")
    if lp.final.status[0] == "max_iter":
        warnings.append(f"the final linear probe stopped at max_iter = {max_iter} with max|grad| = "
                        f"{lp.final.grad_max[0]:.2e} > tol = {tol:g}")
    unconverged = [float(c) for c, s in zip(lp.c_grid, lp.sweep.status, strict=True) if s == "max_iter"]
    if unconverged:
        warnings.append(f"C sweep: {len(unconverged)} value(s) stopped at max_iter ({unconverged})")

    # k-NN
    knn = weighted_knn(x_tr, y_tr, x_te, ks=knn_k, temperature=knn_temperature, classes=all_labels, device=dev,
                       memory_budget_bytes=memory_budget_bytes,
                       progress=lambda f, m: progress(0.45 + 0.15 * f, m))
    for k in knn.k:
        metrics[f"knn{k}_top1"] = knn.accuracy(y_te, k, 1)
        metrics[f"knn{k}_top5"] = knn.accuracy(y_te, k, TOPK)
    clamped = {k: ke for k, ke in zip(knn.k, knn.k_effective, strict=True) if ke != k}
    if clamped:
        warnings.append(f"k larger than the {tr.size} train rows was clamped: {clamped}")

    # open set
    os_fig: dict[str, Any] | None = None
    os_variant: dict[str, Any] = {}
    if not openset:
        os_variant["openset"] = "skipped (openset=False)"
    elif all_labels.size < OPENSET_MIN_CLASSES:
        os_variant["openset"] = f"skipped: {all_labels.size} classes < {OPENSET_MIN_CLASSES}"
        warnings.append(os_variant["openset"])
    else:
        if holdout_classes is None:
            held = choose_holdout_classes(all_labels, openset_share, seed)
            held_source = f"{openset_share:.0%} of classes, default_rng({seed}).choice"
        else:
            held = np.unique(np.asarray(list(holdout_classes)))
            held_source = "given"
            if not np.all(np.isin(held, all_labels)):
                raise ValueError(f"holdout_classes {held[~np.isin(held, all_labels)].tolist()} are not labels")
        known_tr = ~np.isin(y_tr, held)
        is_known_te = ~np.isin(y_te, held)
        if np.unique(y_tr[known_tr]).size < 2:
            raise ValueError("open-set needs at least 2 known classes with train rows")
        if is_known_te.all() or not is_known_te.any():
            os_variant["openset"] = "skipped: the test split has no unknown-class rows or no known-class rows"
            warnings.append(os_variant["openset"])
        else:
            kt = torch.as_tensor(np.flatnonzero(known_tr), device=dev)
            xk, yk = x_tr[kt], y_tr[known_tr]
            s_knn = max_cosine_similarity(xk, x_te, device=dev, memory_budget_bytes=memory_budget_bytes,
                                          progress=lambda f, m: progress(0.6 + 0.05 * f, "open-set " + m))
            lp_os = select_c(xk, yk, cs, seed=seed, device=dev, memory_budget_bytes=memory_budget_bytes,
                             progress=lambda f, m: progress(0.65 + 0.33 * f, "open-set probe: " + m), **fit_kw)
            sc = {"knn": s_knn, **openset_scores(_chunked_logits(lp_os.final, x_te, memory_budget_bytes))}
            au = {key: auroc(v, is_known_te) for key, v in sc.items()}
            fp = {key: fpr_at_tpr(v, is_known_te, OPENSET_TPR) for key, v in sc.items()}
            for key in sc:
                metrics[f"openset_auroc_{key}"] = au[key]
                metrics[f"openset_fpr95_{key}"] = fp[key]
            os_fig = {"held_out_classes": _labels_list(held), "auroc": au, "fpr95": fp, "best_c": lp_os.best_c,
                      "n_known_test": int(is_known_te.sum()), "n_unknown_test": int((~is_known_te).sum())}
            os_variant = {"openset": "k-NN and probe trained on the known classes' train rows; test rows of "
                                     "held-out classes are unknown (negative), known = positive",
                          "openset_held_out_classes": _labels_list(held), "openset_holdout_source": held_source,
                          "openset_share": openset_share, "openset_best_c": lp_os.best_c,
                          "openset_scores": "knn: max cosine to known train rows; msp: max softmax; "
                                            f"energy: T·logsumexp(logits/T), T = {ENERGY_T:g}",
                          "openset_fpr_at_tpr": OPENSET_TPR}

    figures: dict[str, Any] = {
        "c_sweep": {"c": _to_list(lp.c_grid), "holdout_top1": _to_list(lp.holdout_top1), "best_c": lp.best_c,
                    "n_iter": [int(i) for i in lp.sweep.n_iter], "status": list(lp.sweep.status)},
        "per_class_accuracy": {"labels": _labels_list(all_labels), "values": _to_list(cm["recall"])},
        "confusion_matrix": _confusion_figure(all_labels, cm["confusion"], warnings),
        "knn": {"k": list(knn.k), "k_effective": list(knn.k_effective),
                "top1": [metrics[f"knn{k}_top1"] for k in knn.k], "top5": [metrics[f"knn{k}_top5"] for k in knn.k]},
    }
    if os_fig is not None:
        figures["openset"] = os_fig
    variant: dict[str, Any] = {
        "split_source": split_source,
        "n_train": int(tr.size),
        "n_test": int(te.size),
        "seed": seed,
        "holdout_share": HOLDOUT_FRACTION,
        "n_holdout": lp.n_holdout,
        "test_share": None if split is not None else TEST_FRACTION,
        "n_classes": int(all_labels.size),
        "dim": d,
        "device": str(dev),
        "dtype": "float32 features, float64 objective sums",
        "linear": "standardised as StandardScaler (fitting rows' statistics), multinomial logistic regression, bias unpenalised, "
                  "objective mean loss + ‖W‖²/(2·C·n) (scikit-learn's C), batched L-BFGS, C picked on the holdout "
                  "(ties -> smaller C) then refit on all train",
        "loss": loss,
        "gce_q": GCE_Q if loss == "gce" else None,
        "c_grid": _to_list(lp.c_grid),
        "lbfgs": {"history": LBFGS_HISTORY, "tol": tol, "max_iter": max_iter,
                  "final_status": lp.final.status[0], "final_n_iter": int(lp.final.n_iter[0])},
        "knn_k": list(knn.k),
        "knn_k_effective": list(knn.k_effective),
        "knn_temperature": knn_temperature,
        "knn": "L2-normalised, cosine, top-k train rows, vote exp(sim/T); similarity ties: torch.topk order; "
               "class-score ties: lower class first; classes without votes never count for top-5",
        "knn_chunks": {"query": knn.query_chunk, "train": knn.train_chunk},
        "top5_trivial": bool(all_labels.size <= TOPK),
        "memory_budget_bytes": memory_budget_bytes,
        **os_variant,
    }
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _chunked_logits(fit: LogRegFit, x: torch.Tensor, budget: int) -> torch.Tensor:
    k = fit.classes.size
    rows = max(1, budget // max(1, 4 * (k + x.shape[1])))
    parts = [fit.logits(x[a : a + rows], 0) for a in range(0, x.shape[0], rows)]
    return torch.cat(parts, dim=0) if parts else torch.zeros((0, k), device=x.device)


def _confusion_figure(labels: np.ndarray, cm: np.ndarray, warnings: list[str]) -> dict[str, Any]:
    if labels.size <= CONFUSION_MAX_CLASSES:
        return {"labels": _labels_list(labels), "matrix": cm.astype(int).tolist()}
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:CONFUSION_TOP_CELLS]
    cells = [[_label(labels[i // labels.size]), _label(labels[i % labels.size]), int(off.flat[i])]
             for i in flat if off.flat[i] > 0]
    warnings.append(f"{labels.size} classes > {CONFUSION_MAX_CLASSES}: the confusion matrix figure lists its "
                    f"{len(cells)} largest off-diagonal cells [true, predicted, count] instead of the full matrix")
    return {"labels": _labels_list(labels), "matrix": None, "top_confusions": cells,
            "diagonal": [int(v) for v in np.diag(cm)]}


# --- helpers ------------------------------------------------------------------------------------------


def _rank(scores: torch.Tensor, top: int, drop_zero: bool = False) -> np.ndarray:
    """Indices of the `top` largest entries per row, equal values in increasing index (stable sort);
    with drop_zero, entries ≤ 0 become −1."""
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    idx = idx[:, :top]
    if drop_zero:
        idx = torch.where(vals[:, :top] > 0, idx, torch.full_like(idx, -1))
    return idx.cpu().numpy()


def _loss_q(loss: str, q: float) -> float:
    if loss == "ce":
        return 0.0
    if loss == "gce":
        if not 0 < q <= 1:
            raise ValueError(f"gce needs 0 < q ≤ 1, got {q}")
        return float(q)
    if loss == "mae":
        return 1.0
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _as_labels(labels: Any) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.ravel()
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise ValueError(f"labels must be integers, got dtype {y.dtype}")


def _scores_labels(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positive).ravel().astype(bool)
    if s.size != pos.size:
        raise ValueError(f"{s.size} scores but {pos.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, pos


def _shape(embeddings: Any) -> tuple[int, int]:
    shape = tuple(embeddings.shape)
    if len(shape) != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) matrix, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in (np.float16, np.float32, np.float64) and arr.dtype.isnative:
        return arr
    return arr.astype(np.float64)


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (m, D) tensor on device in dtype; numpy input is copied (read-only memmaps included)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=dtype)
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, copy=True)
        t = torch.from_numpy(_native(arr)).to(device=device, dtype=dtype)
    if t.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return t


def _load_rows(embeddings: Any, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """embeddings[rows] (sorted) as float32 on device, read in chunks (a memmap is never read whole)."""
    d = _shape(embeddings)[1]
    out = torch.empty((rows.size, d), dtype=torch.float32, device=device)
    for a in range(0, rows.size, LOAD_CHUNK_ROWS):
        sel = rows[a : a + LOAD_CHUNK_ROWS]
        if isinstance(embeddings, torch.Tensor):
            part = embeddings[torch.as_tensor(sel, device=embeddings.device)].detach()
            out[a : a + sel.size] = part.to(device=device, dtype=torch.float32)
        else:
            part = take_rows(embeddings, sel)
            out[a : a + sel.size] = torch.from_numpy(_native(part)).to(device=device).to(torch.float32)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return out


def _to_list(a: Any) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _label(v: Any) -> int:
    return int(v)


def _labels_list(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(a).ravel()]
