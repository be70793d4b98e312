"""The suites against an earlier revision of themselves, in one process: same numbers, and how much slower or faster.

`python -m benchmarks.bench_revision [--against REV] [--rounds 3] [--no-write]` rebuilds the suites of REV (a
revision with the single-file layout `worker/suites/<suite>.py`, before the suites became packages) from git into a
temporary package, then runs every suite of both on the same inputs, alternating (order swapped each round), best of `--rounds`. It reports the
time ratio (bar: the current code at most 3 % slower) and the largest relative difference of any metric (bar: 1e-9;
the refactor is meant to change no number).
"""

from __future__ import annotations

import argparse
import importlib
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
LEGACY_FILES = ("base", "rows", "spectrum", "probes", "equivariance", "backdoor", "triggers")
DEFAULT_REVISION = "8e6178a"  # the last revision with one file per suite
SLOWDOWN_BAR = 1.03
METRIC_RTOL_BAR = 1e-9


def legacy_suites(revision: str, into: Path) -> str:
    """Write REV's worker/suites/*.py as package `legacy_suites` under `into`; returns the package name."""
    pkg = into / "legacy_suites"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in LEGACY_FILES:
        text = subprocess.run(["git", "show", f"{revision}:worker/suites/{name}.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(into))
    return "legacy_suites"


class TinyEncoder(torch.nn.Module):
    """A fixed random conv net: enough structure for every encoder-suite branch to run (no no_grad: DECREE
    optimises a trigger through it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def cases(old: str) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """{case: (current call, legacy call)} on shared inputs."""
    from worker.suites import backdoor as bd
    from worker.suites import equivariance as eq
    from worker.suites import probes as pr
    from worker.suites import spectrum as sp

    old_sp, old_pr, old_eq, old_bd = (importlib.import_module(f"{old}.{m}")
                                      for m in ("spectrum", "probes", "equivariance", "backdoor"))
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((25_600, 1024)) * 0.99 ** np.arange(1024)).astype(np.float32)
    centers = rng.standard_normal((20, 128)).astype(np.float32)
    y = rng.integers(0, 20, 6000)
    x = (centers[y] + 1.5 * rng.standard_normal((6000, 128))).astype(np.float32)
    pool = np.maximum(rng.standard_normal((20_000, 256)) * (0.97 ** np.arange(256)) + 0.3, 0).astype(np.float32)
    poison = np.zeros(len(pool), bool)
    poison[rng.choice(len(pool), len(pool) // 100, replace=False)] = True
    pool[poison] = np.maximum(pool[poison] * 0.3 + rng.standard_normal(256).astype(np.float32), 0)
    images = rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8)
    enc = TinyEncoder()
    eq_kw = {"n_images": 240, "mlp_epochs": 5, "device": "cpu"}
    bd_kw = {"decree_steps": 400, "decree_seconds": 1e9, "max_images": 240, "device": "cpu"}
    return {
        "spectrum 25600 x 1024 (all metrics + Matryoshka)": (
            lambda: sp.run_spectrum(z, device="cpu"), lambda: old_sp.run_spectrum(z, device="cpu")),
        "probes 6000 x 128, 20 classes (linear sweep, k-NN, open set)": (
            lambda: pr.run_probes(x, y, device="cpu"), lambda: old_pr.run_probes(x, y, device="cpu")),
        "backdoor pool scan 20000 x 256": (
            lambda: bd.scan_pool(pool, poison=poison, device="cpu"),
            lambda: old_bd.scan_pool(pool, poison=poison, device="cpu")),
        "equivariance, tiny conv net, 240 images, MLP 5 epochs": (
            lambda: eq.run_equivariance(enc, images, **eq_kw), lambda: old_eq.run_equivariance(enc, images, **eq_kw)),
        "backdoor encoder scan, tiny conv net, 240 images, DECREE ≤ 400 steps": (
            lambda: bd.scan_encoder(enc, images, **bd_kw), lambda: old_bd.scan_encoder(enc, images, **bd_kw)),
    }


TIMING_KEYS = ("decree_seconds",)  # wall-clock measurements, not results


def best_alternating(old: Callable[[], object], new: Callable[[], object], rounds: int) -> dict[str, tuple[float, object]]:
    """Best wall time of each over `rounds` rounds, the order swapped every round (so neither always runs second,
    on a warmer cache or a drifting machine)."""
    fns = {"old": old, "new": new}
    best: dict[str, tuple[float, object]] = {k: (math.inf, None) for k in fns}
    for r in range(rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            t0 = time.perf_counter()
            out = fns[name]()
            best[name] = (min(best[name][0], time.perf_counter() - t0), out)
    return best


def max_rel_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    """Largest |a - b| / max(|b|, 1e-12) over the metrics of both, timings aside (NaN == NaN); inf when the keys
    differ."""
    if set(a) != set(b):
        return math.inf, f"keys differ: {sorted(set(a) ^ set(b))[:5]}"
    worst, where = 0.0, ""
    for k in a.keys() - set(TIMING_KEYS):
        va, vb = float(a[k]), float(b[k])
        if math.isnan(va) and math.isnan(vb):
            continue
        d = abs(va - vb) / max(abs(vb), 1e-12)
        if not d <= worst:
            worst, where = d, k
    return worst, where


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default=DEFAULT_REVISION, help="revision with one file per suite")
    ap.add_argument("--rounds", type=int, default=6, help="rounds, order swapped each round; best is reported")
    ap.add_argument("--only", help="run the cases whose name contains this text")
    ap.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="repscope-legacy-") as tmp:
        old = legacy_suites(args.against, Path(tmp))
        for name, (new_fn, old_fn) in cases(old).items():
            if args.only and args.only not in name:
                continue
            best = best_alternating(old_fn, new_fn, args.rounds)
            (t_old, r_old), (t_new, r_new) = best["old"], best["new"]
            diff, where = max_rel_diff(r_new.metrics, r_old.metrics)
            ok = t_new <= SLOWDOWN_BAR * t_old and diff <= METRIC_RTOL_BAR
            rows.append(f"| {name} | {args.against}: {t_old:.2f} s | now: {t_new:.2f} s | "
                        f"**{t_new / t_old:.3f}x** time ({'pass' if ok else 'FAIL'}: bar ≤ {SLOWDOWN_BAR}) | "
                        f"{len(r_new.metrics)} metrics, max rel. diff {diff:.1e}{f' ({where})' if where else ''} |")
            print(rows[-1], flush=True)
    header = "| case | baseline | repscope | ratio | notes |\n|---|---|---|---|---|"
    table = "\n".join(rows)
    if not args.no_write:
        write_section("revision", f"## Suites against an earlier revision (refactor check)\n\nMachine: {machine()}. "
                      f"Best of {args.rounds} "
                      f"rounds (old and new alternate, order swapped each round), one process, {time.strftime('%Y-%m-%d')}; baseline: the suites of "
                      f"revision {args.against} rebuilt from git.\n\n{header}\n{table}")


if __name__ == "__main__":
    main(sys.argv[1:])
