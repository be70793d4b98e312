"""Probe suite speed against what a user would otherwise run.

  cpu   linear probe, 50 000 x 768 float32 features, 100 classes, 15-value C sweep chosen on a stratified 10 %
        holdout of train, then refit on all of train: repscope's batched L-BFGS vs scikit-learn
        LogisticRegression(lbfgs) one C after another (StandardScaler, the same split, holdout, grid, tol and
        max_iter). Bar: >= 5x, test accuracies within 0.5 points at the same C.
  gpu   the same sweep on the GPU vs the same scikit-learn sweep on the host's CPUs (bar >= 30x), and weighted
        k-NN (k = 10, 20, 100, 200) of 10 000 queries against 1 000 000 x 768 train rows (bar < 2 s).

Usage: python -m benchmarks.bench_probes [cpu] [gpu] [--scale F] [--tol T] [--repeats R] [--no-write]
  (default: cpu, plus gpu when CUDA exists). --scale multiplies the linear probe's N (50 000) for a quick
  run; the table says which N ran. Imports only torch, numpy, scikit-learn and the stdlib (plus repscope's
  suite), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from benchmarks.common import best_of, machine, write_section
from worker.suites.probes import (
    DEFAULT_C_GRID,
    HOLDOUT_FRACTION,
    LBFGS_MAX_ITER,
    LBFGS_TOL,
    fit_logreg_sweep,
    select_c,
    stratified_split,
    weighted_knn,
)

N_FULL, DIM, CLASSES = 50_000, 768, 100


def mixture(n: int, d: int = DIM, k: int = CLASSES, seed: int = 0, sep: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """Class means in a 64-d latent subspace plus unit noise in all d dims, a decaying spectrum, a random
    rotation and an offset: overlapping classes (a probe that is neither trivial nor hopeless)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, 64)) * sep
    y = rng.permutation(np.arange(n) % k)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = (0.99 ** np.arange(d) + 0.05).astype(np.float32)
    q = (scales[:, None] * q).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 16_384):
        b = min(n, a + 16_384)
        z = rng.standard_normal((b - a, d), dtype=np.float32)
        z[:, :64] += means[y[a:b]].astype(np.float32)
        x[a:b] = z @ q + 0.1
    return x, y


def sklearn_sweep(x_tr: np.ndarray, y_tr: np.ndarray, grid, tol: float, max_iter: int, seed: int = 0) -> dict:
    """What a user would run: StandardScaler + LogisticRegression(lbfgs) per C on train minus the holdout,
    pick the best holdout accuracy (first maximum = smaller C), refit scaler + model on all of train."""
    fit_i, hold_i = stratified_split(y_tr, HOLDOUT_FRACTION, seed)
    sc = StandardScaler().fit(x_tr[fit_i])
    xf, xh = sc.transform(x_tr[fit_i]), sc.transform(x_tr[hold_i])
    hold, iters = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is reported in the table instead
        for c in grid:
            m = LogisticRegression(C=c, tol=tol, max_iter=max_iter).fit(xf, y_tr[fit_i])
            hold.append(m.score(xh, y_tr[hold_i]))
            iters.append(int(m.n_iter_[0]))
        best = int(np.argmax(hold))
        sc_all = StandardScaler().fit(x_tr)
        final = LogisticRegression(C=grid[best], tol=tol, max_iter=max_iter).fit(sc_all.transform(x_tr), y_tr)
    return {"best_c": float(grid[best]), "best": best, "hold": hold, "iters": iters, "scaler": sc_all, "model": final}


def sklearn_test_acc(x_tr, y_tr, x_te, y_te, c: float, tol: float, max_iter: int) -> float:
    sc = StandardScaler().fit(x_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=c, tol=tol, max_iter=max_iter).fit(sc.transform(x_tr), y_tr)
    return float(m.score(sc.transform(x_te), y_te))


def repscope_test_acc(lp, x_te: np.ndarray, y_te: np.ndarray) -> float:
    pred = lp.final.predict(x_te)[0]
    return float(np.mean(lp.final.classes[pred] == y_te))


def linear_case(device: str, scale: float, tol: float, repeats: int = 2, max_iter: int = LBFGS_MAX_ITER) -> str:
    n = max(2_000, int(round(N_FULL * scale)))
    x, y = mixture(n)
    tr, te = stratified_split(y, 0.2, 0)
    x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    grid = np.sort(np.asarray(DEFAULT_C_GRID))
    dev = torch.device(device)

    def ours():
        out = select_c(x_tr, y_tr, grid, device=dev, tol=tol, max_iter=max_iter)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    if dev.type == "cuda":  # warm up CUDA kernels and cuSOLVER on a small problem
        fit_logreg_sweep(x_tr[:1000], y_tr[:1000], grid[:2], device=dev)
        torch.cuda.synchronize()
    t_ours, lp = best_of(ours, repeats=repeats)
    acc_ours = repscope_test_acc(lp, x_te, y_te)

    t0 = time.perf_counter()
    sk = sklearn_sweep(x_tr, y_tr, grid, tol, max_iter)
    t_sk = time.perf_counter() - t0
    acc_sk = float(sk["model"].score(sk["scaler"].transform(x_te), y_te))
    if sk["best_c"] == lp.best_c:
        acc_sk_same_c, same = acc_sk, "same C chosen"
    else:  # compare at equal C too (untimed extra fit)
        acc_sk_same_c = sklearn_test_acc(x_tr, y_tr, x_te, y_te, lp.best_c, tol, max_iter)
        same = f"scikit-learn chose C = {sk['best_c']:g} (test {100 * acc_sk:.2f} %)"
    diff = 100 * abs(acc_ours - acc_sk_same_c)
    sk_capped = sum(i >= max_iter for i in sk["iters"])
    ours_capped = sum(s == "max_iter" for s in lp.sweep.status)
    where = "GPU" if dev.type == "cuda" else "CPU"
    return (f"| {where} linear probe {n} x {DIM}, {CLASSES} classes, {len(grid)}-C sweep + refit "
            f"(tol {tol:g}, max_iter {max_iter}) | scikit-learn lbfgs one C after another {t_sk:.1f} s "
            f"(iterations per C {min(sk['iters'])}-{max(sk['iters'])}, sum {sum(sk['iters'])}, {sk_capped} at max_iter) | "
            f"batched L-BFGS on {where} {t_ours:.2f} s, best of {repeats} (iterations per C "
            f"{lp.sweep.n_iter.min()}-{lp.sweep.n_iter.max()}, sum {lp.sweep.n_iter.sum()}, {ours_capped} at "
            f"max_iter) | **{t_sk / t_ours:.1f}x** | C = {lp.best_c:g}: test top-1 repscope "
            f"{100 * acc_ours:.2f} %, scikit-learn {100 * acc_sk_same_c:.2f} % (|diff| {diff:.2f} points, bar 0.5); "
            f"{same} |")


def knn_case(n_train: int = 1_000_000, n_query: int = 10_000, d: int = DIM, classes: int = 1000) -> str:
    if not torch.cuda.is_available():
        return "| GPU k-NN | no CUDA device on this machine | | | |"
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    train = torch.randn((n_train, d), device=dev, generator=gen)
    query = torch.randn((n_query, d), device=dev, generator=gen)
    labels = np.random.default_rng(0).integers(0, classes, n_train)

    def run():
        out = weighted_knn(train, labels, query, ks=(10, 20, 100, 200), device=dev)
        torch.cuda.synchronize()
        return out

    run()  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = run()
        times.append(time.perf_counter() - t0)
    q_host = query.cpu().numpy()
    t0 = time.perf_counter()
    weighted_knn(train, labels, q_host, ks=(10, 20, 100, 200), device=dev)
    torch.cuda.synchronize()
    t_host = time.perf_counter() - t0
    return (f"| GPU weighted k-NN, {n_query} queries vs {n_train} x {d} train, k = 10/20/100/200 | "
            f"(bar: < 2 s) | {min(times):.3f} s best of 3, train on the GPU; {t_host:.3f} s with queries from "
            f"host memory | | chunks: {res.query_chunk} queries x {res.train_chunk} train rows (512 MiB budget) |")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="*", choices=["cpu", "gpu"], help="cases (default: cpu, plus gpu with CUDA)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the linear probe's N = 50 000 by this")
    ap.add_argument("--tol", type=float, default=LBFGS_TOL, help="gtol for both solvers (repscope's default)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs of repscope's sweep")
    ap.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    which = set(args.which) or {"cpu"} | ({"gpu"} if torch.cuda.is_available() else set())
    lines = []
    if "cpu" in which:
        lines.append(linear_case("cpu", args.scale, args.tol, args.repeats))
        print(lines[-1], flush=True)
    if "gpu" in which:
        if torch.cuda.is_available():
            lines.append(linear_case("cuda", args.scale, args.tol, args.repeats))
            print(lines[-1], flush=True)
        lines.append(knn_case())
        print(lines[-1], flush=True)
    if args.no_write:
        return
    header = "| case | baseline | repscope | speed-up | notes |\n|---|---|---|---|---|"
    gpu_only = which == {"gpu"}
    write_section("probes-gpu" if gpu_only else "probes",
                  f"## Probe suite{' (GPU)' if gpu_only else ''}\n\nMachine: {machine()}. scikit-learn once, "
                  f"repscope best of {args.repeats}, one process, {time.strftime('%Y-%m-%d')}; N scale {args.scale:g}.\n\n{header}\n" + "\n".join(lines))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
