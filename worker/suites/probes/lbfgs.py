"""Batched L-BFGS on the multinomial logistic objective: every C of a sweep fitted at once.

Fitting n_C values of C as one [n_C, D, K] weight tensor makes every function evaluation one GEMM
X·[W_1 … W_nC] instead of n_C small ones (``_objective``). Handing the stacked parameters of the summed
objective to one torch.optim.LBFGS would find the right minimiser (the sum is separable) but run no proper
L-BFGS for any single C: the two-loop recursion's inner products span the whole stacked vector, so one C's
curvature pairs steer another's direction; one step length is shared, so the worst-conditioned C dictates it;
and the stopping test on the summed gradient lets a small C stop short of its own tolerance. Here every C has
its own history (s, y, ρ), its own H0 = γI with γ = sᵀy / yᵀy, its own Armijo backtracking line search and its
own stopping test; only the function evaluations are shared, and finished C's leave the batch.

Algorithm: L-BFGS two-loop recursion (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4), Armijo
backtracking with quadratic interpolation (ibid. §3.5); history and gradient test as scikit-learn's lbfgs
(maxcor = 10, gtol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from worker.suites.common.budget import rows_per_chunk

from .gemm import matmul

LBFGS_HISTORY = 10  # stored (s, y) pairs, scikit-learn's maxcor
# Stopping test max|∇f| ≤ tol as scikit-learn's gtol, far tighter than its default 1e-4: at large C the
# objective is flat, a gradient test stops far from the optimum, and two solvers stopped early on different
# paths do not agree "at equal C" (benchmarks/RESULTS.md). In float32 a fit usually ends earlier, at the
# precision floor (FLOOR_RTOL_EPS).
LBFGS_TOL = 1e-7
LBFGS_MAX_ITER = 1000
ARMIJO_C1 = 1e-4
LINE_SEARCH_MAX_STEPS = 25
CURVATURE_EPS = 1e-10  # pairs with sᵀy ≤ eps·‖s‖‖y‖ are not stored (never for the strictly convex CE + L2)
# The precision floor: a rejected trial step that changes f by at most 0.1·eps(dtype)·|f| (1.2e-8 relative in
# float32) ends the fit; the row-wise rounding of a float32 loss leaves f noisy at ~1e-9 relative, where
# backtracking would burn evaluations without a resolvable decrease.
FLOOR_RTOL_EPS = 0.1

_FLOAT_MIN = {dt: torch.finfo(dt).tiny for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

# fun(x (a, P), problem ids (a,)) -> (f (a,) float64, ∇f (a, P), max|∇f| (a,) float64)
ObjectiveFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class _Data:
    """A fitting problem after standardisation and rotation, shared by every C of a batch."""

    z1: torch.Tensor  # (n, D + 1) rotated standardised features and a column of ones (the bias rides in the GEMM)
    y: torch.Tensor  # (n,) class indices
    k: int
    q: float  # 0 = cross-entropy
    rot: torch.Tensor | None  # V (D, D), None when not rotated
    row_budget: int  # bytes for one chunk of logits


def _objective(
    u: torch.Tensor, sc: torch.Tensor, sb: torch.Tensor, inv_cn: torch.Tensor, data: _Data
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f (a,) float64, ∇_u f (a, P), max|∇_W f| (a,) in the standardised basis, for a problems at once.

    W = diag(sc) U, b = sb·u_b; f = mean comp-sum loss + inv_cn·‖W‖²/2; ∂ℓ/∂logits = w_i (p − e_y) with
    w_i = p_y^q (1 for ce)."""
    a = u.shape[0]
    z1, k = data.z1, data.k
    n, d = z1.shape[0], z1.shape[1] - 1
    dt = z1.dtype
    w = sc[:, :, None] * u[:, : d * k].view(a, d, k)  # (a, D, K)
    b = sb[:, None] * u[:, d * k :]  # (a, K)
    w_all = torch.cat([w.permute(1, 0, 2).reshape(d, a * k), b.reshape(1, a * k)])  # (D + 1, a K): bias last
    g_all = torch.zeros((d + 1, a * k), dtype=dt, device=z1.device)
    loss_sum = torch.zeros(a, dtype=torch.float64, device=z1.device)
    rows = rows_per_chunk(data.row_budget, z1.element_size() * (a * k + d + 1) * 2)
    for s in range(0, n, rows):
        zr = z1[s : s + rows]
        r = zr.shape[0]
        idx = data.y[s : s + rows].view(r, 1, 1).expand(r, a, 1)
        # softmax in place on the fresh logits, one exp per element:
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


def _flush_subnormal(p: torch.Tensor) -> None:
    """Set probabilities below the smallest normal float (exp(l − max) < 1.2e-38 in float32) to exactly 0, in
    place. At large C on nearly separable data most wrong-class probabilities underflow into subnormals, and a
    GEMM fed subnormals runs far slower on x86 (microcode assists; benchmarks/RESULTS.md). Their contribution
    to any gradient entry is < 1e-38: what flush-to-zero hardware modes would do anyway."""
    torch.nn.functional.threshold_(p, _FLOAT_MIN[p.dtype], 0.0)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (n, P) matrices without an (n, P) temporary. On the CPU one BLAS dot per
    row (n is the handful of C values in a batch), which beats the one-call torch.bmm of (n,1,P)·(n,P,1)
    there (benchmarks/RESULTS.md)."""
    if a.device.type == "cpu":
        return torch.stack([torch.dot(a[i], b[i]) for i in range(a.shape[0])]) if a.shape[0] else a.new_zeros(0)
    return torch.linalg.vecdot(a, b)


def _add_scaled_rows(y: torch.Tensor, alpha: torch.Tensor, x: torch.Tensor) -> None:
    """y[i] += alpha[i] * x[i] in place, one pass (a batched rank-1 update)."""
    y.unsqueeze(1).baddbmm_(alpha.to(y.dtype).view(-1, 1, 1), x.unsqueeze(1))


class _Trial(NamedTuple):
    """Accepted points of a line search (rows of problems whose search failed are undefined)."""

    x: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    gm: torch.Tensor


@dataclass
class _Batch:
    """The problems still running (row j is problem ids[j]) with their L-BFGS state, and the results of
    those that have left."""

    ids: torch.Tensor
    x: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    gm: torch.Tensor
    s_hist: torch.Tensor  # (m, n, P) slot-major: s_hist[j] is one contiguous (n, P) block
    y_hist: torch.Tensor
    rho: torch.Tensor  # (n, m); 0 marks an unusable pair
    gamma: torch.Tensor  # (n,)
    out_x: torch.Tensor
    out_f: np.ndarray
    out_g: np.ndarray
    out_it: np.ndarray
    out_status: list[str]
    n_pairs: int = 0

    @classmethod
    def start(cls, fun: ObjectiveFn, x0: torch.Tensor, m: int) -> _Batch:
        nb, p = x0.shape
        dev, dt = x0.device, x0.dtype
        ids = torch.arange(nb, device=dev)
        x = x0.clone()
        f, g, gm = fun(x, ids)
        return cls(ids=ids, x=x, f=f, g=g, gm=gm,
                   s_hist=torch.zeros((m, nb, p), dtype=dt, device=dev),
                   y_hist=torch.zeros((m, nb, p), dtype=dt, device=dev),
                   rho=torch.zeros((nb, m), dtype=dt, device=dev), gamma=torch.ones(nb, dtype=dt, device=dev),
                   out_x=torch.empty_like(x0), out_f=np.zeros(nb), out_g=np.zeros(nb),
                   out_it=np.zeros(nb, dtype=np.int64), out_status=["max_iter"] * nb)

    def finish(self, mask: torch.Tensor, why: str, it: int) -> None:
        """Record the current point of the masked rows as their result."""
        for j in torch.nonzero(mask).flatten().tolist():
            pid = int(self.ids[j])
            self.out_x[pid] = self.x[j]
            self.out_f[pid] = float(self.f[j])
            self.out_g[pid] = float(self.gm[j])
            self.out_it[pid] = it
            self.out_status[pid] = why

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the rows outside `mask` from the batch."""
        self.ids, self.x, self.f = self.ids[mask], self.x[mask], self.f[mask]
        self.g, self.gm = self.g[mask], self.gm[mask]
        self.s_hist, self.y_hist = self.s_hist[:, mask], self.y_hist[:, mask]
        self.rho, self.gamma = self.rho[mask], self.gamma[mask]


def _direction(b: _Batch, m: int) -> torch.Tensor:
    """−H∇f by the two-loop recursion over each problem's own pairs, newest first."""
    order = [(b.n_pairs - 1 - j) % m for j in range(min(b.n_pairs, m))]
    qv = b.g.clone()
    alphas = []
    for j in order:
        al = b.rho[:, j] * _rowdot(b.s_hist[j], qv)
        _add_scaled_rows(qv, -al, b.y_hist[j])
        alphas.append(al)
    r = b.gamma[:, None] * qv
    for j, al in zip(reversed(order), reversed(alphas), strict=True):
        be = b.rho[:, j] * _rowdot(b.y_hist[j], r)
        _add_scaled_rows(r, al - be, b.s_hist[j])
    return -r


def _descent(b: _Batch, d: torch.Tensor, scaled_first_step: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d, ∇fᵀd float64, first trial step t). A problem whose d is not a descent direction restarts from
    steepest descent with its history cleared; t = 1, or min(1, 1/‖∇f‖₁) with `scaled_first_step`."""
    gd = (b.g * d).sum(dim=1).to(torch.float64)
    bad = ~(gd < 0) | ~torch.isfinite(gd)
    t = torch.ones(b.ids.numel(), dtype=torch.float64, device=d.device)
    if scaled_first_step:
        t = torch.clamp(1.0 / b.g.abs().sum(dim=1).to(torch.float64), max=1.0)
    if bool(bad.any()):
        d[bad] = -b.g[bad]
        gd[bad] = -(b.g[bad].to(torch.float64) ** 2).sum(dim=1)
        b.rho[bad] = 0
        b.gamma[bad] = 1
    return d, gd, t


def _line_search(
    fun: ObjectiveFn, b: _Batch, d: torch.Tensor, gd: torch.Tensor, t: torch.Tensor, floor_rtol: float
) -> tuple[_Trial, torch.Tensor, torch.Tensor]:
    """Batched Armijo backtracking f(x + t d) ≤ f(x) + c1·t·∇fᵀd, the next t by quadratic interpolation
    clipped to [0.1 t, 0.5 t]. Returns (accepted points, failed mask, precision-floor mask): failed after
    LINE_SEARCH_MAX_STEPS rejections; floor when a rejected trial moved f by ≤ floor_rtol·|f|."""
    x, f, ids = b.x, b.f, b.ids
    new = _Trial(torch.empty_like(x), torch.empty_like(f), torch.empty_like(b.g), torch.empty_like(b.gm))
    pend = torch.arange(ids.numel(), device=x.device)
    failed = torch.zeros(ids.numel(), dtype=torch.bool, device=x.device)
    floor = torch.zeros(ids.numel(), dtype=torch.bool, device=x.device)
    for _ in range(LINE_SEARCH_MAX_STEPS):
        xt = x[pend] + t[pend, None].to(x.dtype) * d[pend]
        ft, gt, gmt = fun(xt, ids[pend])
        ok = (ft <= f[pend] + ARMIJO_C1 * t[pend] * gd[pend]) & torch.isfinite(ft)
        acc = pend[ok]
        new.x[acc], new.f[acc], new.g[acc], new.gm[acc] = xt[ok], ft[ok], gt[ok], gmt[ok]
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
    return new, failed, floor


def _store_pair(b: _Batch, ok: torch.Tensor, new: _Trial, m: int) -> None:
    """Write s = x_new − x, y = ∇f_new − ∇f into the next ring slot where ok and sᵀy is safely positive (a zero
    pair, ρ = 0, elsewhere), and update γ = sᵀy / yᵀy there."""
    s_vec = new.x - b.x
    y_vec = new.g - b.g
    sy = (s_vec * y_vec).sum(dim=1)
    yy = (y_vec * y_vec).sum(dim=1)
    usable = ok & (sy > CURVATURE_EPS * s_vec.norm(dim=1) * y_vec.norm(dim=1)) & (yy > 0)
    slot = b.n_pairs % m
    b.s_hist[slot] = torch.where(usable[:, None], s_vec, 0.0)
    b.y_hist[slot] = torch.where(usable[:, None], y_vec, 0.0)
    b.rho[:, slot] = torch.where(usable, 1.0 / torch.where(usable, sy, torch.ones_like(sy)), torch.zeros_like(sy))
    b.gamma = torch.where(usable, sy / torch.where(usable, yy, torch.ones_like(yy)), b.gamma)
    b.n_pairs += 1


def _accept(b: _Batch, ok: torch.Tensor, new: _Trial, tol: float, it: int) -> torch.Tensor:
    """Move the ok rows to their new point; finish those converged (max|∇f| ≤ tol) or stalled (f not lowered,
    the precision floor). Returns the mask of finished rows."""
    stalled = ok & ~(new.f < b.f)
    b.x = torch.where(ok[:, None], new.x, b.x)
    b.f = torch.where(ok, new.f, b.f)
    b.g = torch.where(ok[:, None], new.g, b.g)
    b.gm = torch.where(ok, new.gm, b.gm)
    conv = ok & (b.gm <= tol)
    if bool(conv.any()):
        b.finish(conv, "converged", it)
    stalled &= ~conv
    if bool(stalled.any()):
        b.finish(stalled, "precision floor", it)
    return conv | stalled


def _lbfgs_batch(
    fun: ObjectiveFn,
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    history: int,
    first_step_unit: bool,
    progress: Callable[[float, str], None],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Independent L-BFGS runs for the rows of x0 (n_b, P): (x, f, max|∇f|, iterations, status) per row.

    First trial step t = 1 with a preconditioner (`first_step_unit`), else min(1, 1/‖∇f‖₁) as
    torch.optim.LBFGS. A problem leaves the batch when converged (max|∇f| ≤ tol), at the precision floor,
    when its line search fails, or at max_iter (status "converged" | "precision floor" | "line search" |
    "max_iter")."""
    nb = x0.shape[0]
    m = max(1, history)
    floor_rtol = FLOOR_RTOL_EPS * torch.finfo(x0.dtype).eps
    b = _Batch.start(fun, x0, m)
    done = b.gm <= tol
    if bool(done.any()):
        b.finish(done, "converged", 0)
        b.keep(~done)
    it = 0
    for it in range(1, max_iter + 1):
        if b.ids.numel() == 0:
            break
        d, gd, t = _descent(b, _direction(b, m), it == 1 and not first_step_unit)
        new, failed, floor = _line_search(fun, b, d, gd, t, floor_rtol)
        if bool(failed.any()):
            b.finish(failed, "line search", it - 1)
        if bool(floor.any()):
            b.finish(floor, "precision floor", it - 1)
        failed |= floor
        ok = ~failed
        _store_pair(b, ok, new, m)
        gone = failed | _accept(b, ok, new, tol, it)
        if bool(gone.any()):
            b.keep(~gone)
        n_done = nb - b.ids.numel()
        progress(max(n_done / nb, it / max_iter), f"L-BFGS iteration {it}: {n_done}/{nb} C values done")
    if b.ids.numel():
        b.finish(torch.ones(b.ids.numel(), dtype=torch.bool, device=x0.device), "max_iter", it)
    return b.out_x, b.out_f, b.out_g, b.out_it, b.out_status
