"""Benchmark: the label-free pool scan on natural, clustered pools (issue #23, item 3).

  natural  benchmarks/natural_pools.py fixtures: 2 400 32-px near-duplicate views of 28 scenes cut from
           scikit-image's photographs, a SimCLR TinyConvNet trained on them and one BadEncoder-style backdoor per
           trigger (badencoder, ctrl, grid, blend, ssl_patch), for ENCODER_SEEDS; POISON_DRAWS pools per trigger
           and poison rate (0.5 %, 1 %, 2 %), embedded by that trigger's backdoored encoder; scan_pool with the
           images. AUROC and TPR at 1 % FPR of every score; the bar: on every (trigger, rate) the best label-free
           score and the default `combined` reach a mean AUROC ≥ BAR.
  large    the same at LARGE_N images (one encoder seed): the LOF reference bank is then a subsample.
  shapes   control in the other regime (diffuse clean data): benchmarks/simclr_backdoor.py fixtures, 1 % poisons
           as benchmarks/bench_backdoor.py draws them (seed 0 encoders).
  speed    scan_pool on the 20 000 × 256 pool of bench_backdoor's speed case, against the scores the scan had
           before (k-NN density, k-means, spectral signature, ranking), interleaved in one process.

Usage: python -m benchmarks.bench_pool_natural [natural] [large] [shapes] [speed]   (default: all). Writes the
RESULTS.md section between <!-- bench:pool-natural --> markers. Fixture training is cached (simclr_backdoor's
cache folder); cold, each natural encoder seed trains in ≈ 1–2 min on one thread.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from benchmarks import natural_pools as npl
from benchmarks.common import best_of_interleaved, machine, write_section
from worker.suites import backdoor as bd

ENCODER_SEEDS = (0, 1, 2)
POISON_DRAWS = (0, 1, 2)
LARGE_N = 9600
BAR = 0.9
LABEL_FREE = ("knn_density", "spectral", "lof", "spectral_robust", "spectre", "combined")
IMAGE = ("ctrl_energy", "grid_energy")
SCORES = (*LABEL_FREE, *IMAGE)

Cell = dict[str, list[float]]


def scan_cells(fx: npl.NaturalFixtures, cells: dict[tuple[str, float], Cell], seconds: list[float]) -> None:
    """Scan every (trigger, rate, draw) pool of one fixture set; append each score's AUROC / TPR@1 % FPR."""
    for trigger in fx.config.triggers:
        for rate in npl.POISON_RATES:
            for draw in POISON_DRAWS:
                z, images, flags = npl.pool_embeddings(fx, trigger, rate, draw)
                t0 = time.perf_counter()
                m = bd.scan_pool(z, images=images, poison=flags, seed=draw, device="cpu", top_k=0).metrics
                seconds.append(time.perf_counter() - t0)
                cell = cells.setdefault((trigger, rate), defaultdict(list))
                for s in SCORES:
                    cell[f"{s}_auroc"].append(m[f"{s}_auroc"])
                    cell[f"{s}_tpr1"].append(m[f"{s}_tpr_at_1pct_fpr"])


def fmt(v: list[float]) -> str:
    a = np.asarray(v)
    return f"{a.mean():.2f} ± {a.std():.2f}"


def table(cells: dict[tuple[str, float], Cell], n_pools: str) -> tuple[str, list[str]]:
    """Two markdown tables (AUROC, TPR@1 % FPR; mean ± std over the pools, min of the AUROC in brackets) and the
    fixtures that miss the bar."""
    head = (
        "| trigger | poison rate | "
        + " | ".join(SCORES)
        + " | best label-free |\n|---|---|"
        + "---|" * (len(SCORES) + 1)
    )
    auc_rows, tpr_rows, misses = [], [], []
    for (trigger, rate), cell in cells.items():
        means = {s: float(np.mean(cell[f"{s}_auroc"])) for s in LABEL_FREE}
        best = max(means, key=means.get)
        auc_rows.append(f"| {trigger} | {rate:.1%} | " + " | ".join(
            f"{fmt(cell[f'{s}_auroc'])} [{min(cell[f'{s}_auroc']):.2f}]" for s in SCORES)
            + f" | {best} {means[best]:.2f} |")  # fmt: skip
        tpr_rows.append(f"| {trigger} | {rate:.1%} | " + " | ".join(fmt(cell[f"{s}_tpr1"]) for s in SCORES)
                        + f" | {best} {np.mean(cell[f'{best}_tpr1']):.2f} |")  # fmt: skip
        if means["combined"] < BAR or means[best] < BAR:
            misses.append(
                f"{trigger} {rate:.1%} (combined {means['combined']:.2f}, best {best} {means[best]:.2f})"
            )
    text = (f"AUROC, mean ± std over {n_pools} [min]:\n\n{head}\n" + "\n".join(auc_rows)
            + f"\n\nTPR at 1 % FPR, mean ± std over {n_pools}:\n\n{head}\n" + "\n".join(tpr_rows))  # fmt: skip
    return text, misses


def bench_natural(
    seeds: tuple[int, ...] = ENCODER_SEEDS, n_images: int = npl.N_IMAGES
) -> tuple[str, list[str]]:
    cells: dict[tuple[str, float], Cell] = {}
    seconds: list[float] = []
    train = []
    for seed in seeds:
        fx = npl.build(npl.PoolConfig(seed=seed, n_images=n_images))
        train.append(sum(fx.seconds.values()))
        scan_cells(fx, cells, seconds)
    text, misses = table(cells, f"{len(seeds)} encoder seeds × {len(POISON_DRAWS)} poison draws")
    sizes = np.bincount(fx.scene)
    note = (
        f"\n\nPool of the last seed: {len(fx.images)} images, {len(sizes)} scenes of {sizes.min()}–{sizes.max()} "
        f"views; fixture training (one thread, recorded when trained) {np.mean(train):.0f} s per seed; "
        f"scan_pool with images {np.mean(seconds):.2f} s per pool (2 threads)."
    )
    return text + note, misses


def bench_shapes() -> str:
    from benchmarks import bench_backdoor as bb
    from benchmarks import simclr_backdoor as sb

    cells: dict[tuple[str, float], Cell] = {}
    fx = sb.build(sb.FixtureConfig(seed=0))
    for trigger in sb.BACKDOOR_TRIGGERS:
        for draw in POISON_DRAWS:
            images, flags = bb.poisoned_pool(fx, trigger, draw)
            z = sb.embed(fx.backdoored[trigger], images).numpy()
            m = bd.scan_pool(z, images=images, poison=flags, seed=draw, device="cpu", top_k=0).metrics
            cell = cells.setdefault((trigger, bb.POOL_SHARE), defaultdict(list))
            for s in SCORES:
                cell[f"{s}_auroc"].append(m[f"{s}_auroc"])
                cell[f"{s}_tpr1"].append(m[f"{s}_tpr_at_1pct_fpr"])
    return table(cells, f"{len(POISON_DRAWS)} poison draws")[0]


def speed_pool(n: int = 20_000, d: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """bench_backdoor.bench_speed's pool: ReLU-like features, 1 % collapsed poisons."""
    rng = np.random.default_rng(0)
    z = np.maximum(rng.standard_normal((n, d)) * (0.97 ** np.arange(d)) + 0.3, 0).astype(np.float32)
    poison = np.zeros(n, bool)
    poison[rng.choice(n, n // 100, replace=False)] = True
    z[poison] = np.maximum(z[poison] * 0.3 + rng.standard_normal(d).astype(np.float32), 0)
    return z, poison


def earlier_scan(z: np.ndarray, poison: np.ndarray) -> dict[str, float]:
    """What scan_pool computed before this change: k-NN density, k-means and the spectral signature, then the
    same ranking (top-k, histograms) and ROC metrics for those two scores."""
    import torch

    from worker.suites.backdoor import pool
    from worker.suites.common.arrays import l2_normalize

    zt = torch.from_numpy(z)
    zc = zt - zt.double().mean(dim=0).float()
    scores = {"knn_density": bd.zscore(bd.knn_density(zc, bd.POOL_K, device="cpu"))}
    labels = bd.kmeans(l2_normalize(zc), bd.DEFAULT_CLUSTERS, device="cpu")
    scores["spectral"] = bd.spectral_signature(zc, labels, device="cpu")
    metrics, figures = pool._ranking(scores, poison, bd.TOP_K)
    pool._against_poison(scores, poison, metrics, figures, [])
    return metrics


def bench_speed() -> str:
    import torch

    z, poison = speed_pool()
    rows = []
    before = torch.get_num_threads()
    for threads in sorted({1, before}):
        torch.set_num_threads(threads)
        res = best_of_interleaved({"before": lambda: earlier_scan(z, poison),
                                   "now": lambda: bd.scan_pool(z, poison=poison, device="cpu")}, rounds=3)  # fmt: skip
        (t_old, _), (t_new, r) = res["before"], res["now"]
        m = r.metrics
        rows.append(
            f"| CPU pool scan 20000 x 256 float32 (1 % collapsed poisons), {threads} thread(s) | the scan's scores "
            f"before (k-NN density, k-means, spectral; ranking, ROC) {t_old:.2f} s | scan_pool now {t_new:.2f} s "
            f"(also LOF, robust spectral, SPECTRE, combined) | **{t_new / t_old:.2f}x** time | AUROC combined "
            f"{m['combined_auroc']:.3f}, lof {m['lof_auroc']:.3f}, spectral_robust {m['spectral_robust_auroc']:.3f}, "
            f"spectre {m['spectre_auroc']:.3f} |"
        )
    torch.set_num_threads(before)
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    which = [c for c in ("natural", "large", "shapes", "speed") if c in argv] or ["natural", "large", "shapes",
                                                                                   "speed"]  # fmt: skip
    date = time.strftime("%Y-%m-%d")
    t0 = time.perf_counter()
    parts = []
    misses: list[str] = []
    if "natural" in which:
        text, miss = bench_natural()
        misses += miss
        parts.append(f"### Natural clustered pools ({npl.N_IMAGES} images)\n\n{text}")
        print(parts[-1], flush=True)
    if "large" in which:
        text, miss = bench_natural(seeds=(0,), n_images=LARGE_N)
        misses += [f"large: {m}" for m in miss]
        parts.append(
            f"### Larger natural pool ({LARGE_N} images: the LOF bank is a 2 048-row subsample)\n\n{text}"
        )
        print(parts[-1], flush=True)
    if "shapes" in which:
        parts.append(
            "### Control: diffuse clean data (`shapes` fixtures of bench_backdoor, 1 % poisons, seed-0 "
            f"encoders)\n\n{bench_shapes()}"
        )
        print(parts[-1], flush=True)
    if "speed" in which:
        row = bench_speed()
        parts.append(
            "### Speed (best of 3, interleaved)\n\n| case | before | now | ratio | notes |\n"
            f"|---|---|---|---|---|\n{row}"
        )
        print(parts[-1], flush=True)
    verdict = (f"Bar (mean AUROC ≥ {BAR} for the best label-free score and for `combined` on every fixture): "
               + ("**pass**." if not misses else "**FAIL**: " + "; ".join(misses) + "."))  # fmt: skip
    write_section(
        "pool-natural",
        f"## Backdoor pool scan on natural, clustered pools\n\nMachine: {machine()}. One "
        f"process, {date}, {time.perf_counter() - t0:.0f} s in all.\n\nFixtures: benchmarks/natural_pools.py "
        "(near-duplicate views of scenes cut from scikit-image's photographs; SimCLR TinyConvNet trained "
        "on the pool, BadEncoder-style backdoor per trigger pulling triggered images onto a view of the "
        "largest scene; poisons drawn outside that scene). Label-free scores: knn_density, spectral, lof, "
        "spectral_robust, spectre, combined (the default: Σ log(1 + max(0, robust z)) of knn_density, "
        "lof, spectral_robust); ctrl_energy and grid_energy read the images and only see their own "
        f"trigger.\n\n{verdict}\n\n" + "\n\n".join(parts),
    )
    print(verdict)


if __name__ == "__main__":
    main(sys.argv[1:])
