"""Backdoor suite: detection on real backdoored encoders, and pool-scan speed against what a user would run.

  detect   benchmarks/simclr_backdoor.py fixtures (tiny SimCLR ConvNet on `shapes`, BadEncoder-style
           backdoors for the patch, CTRL and grid triggers) for ENCODER_SEEDS training seeds: attack success,
           then scan_encoder on each encoder (clean + 3 backdoored) with the suite's defaults (DECREE: centred
           cosine, the code's schedule and stop rule), and scan_pool on pools where 1 % of the images carry a
           trigger, POOL_SEEDS poison draws each, with embeddings from the encoder backdoored with that trigger
           and, as a control, from the clean one. Then DECREE alone on the natural-image fixtures
           (benchmarks/natural_backdoor.py: clean, BadEncoder 5×5 patch, the same with faint triggers in
           training) for DECREE_SEEDS: PL1, the mask's mass on the trigger's 25 pixels, and whether the
           recovered stamp sends images to the attacker's reference embedding; the code's raw cosine for seed 0.
  speed    scan_pool's embedding scores (k-NN density, k-means, spectral signature) on a 20 000 × 256 pool
           against scikit-learn NearestNeighbors (brute cosine) + KMeans + numpy SVD per cluster.
  gpu      (CUDA only) scan_encoder on the GPU against the CPU for the seed-0 fixtures (same numbers?), the
           pool scan of 200 000 × 768 on the GPU. (CTRL's fidelity to its official kornia YUV path is a test,
           tests/unit/test_triggers_fidelity.py; the OpenCV YCrCb helper compared here before is not the path CTRL
           trains with.)

Usage: python -m benchmarks.bench_backdoor [detect] [speed] [gpu]   (default: detect and speed, plus gpu when CUDA
exists). detect + speed take about 2–4 minutes on 2 CPU cores (each training seed ≈ 35–60 s when not cached).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks import natural_backdoor as nbk
from benchmarks import simclr_backdoor as sb
from benchmarks.common import best_of, machine, write_section
from worker.suites import backdoor as bd
from worker.suites.backdoor import triggers as trig

ENCODER_SEEDS = (0, 1)  # SimCLR + backdoor training seeds (each ≈ 1 min on 2 cores)
POOL_SEEDS = (0, 1, 2, 3, 4)  # poison draws per pool
SCAN_IMAGES = 512  # held-out images per encoder scan
DECREE_SEEDS = (0, 1, 2)  # DECREE initialisations on the natural-image fixtures
POOL_SHARE = 0.01


def poisoned_pool(fx: sb.Fixtures, trigger: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(fx.images)
    poison = np.zeros(n, bool)
    poison[rng.choice(n, int(round(POOL_SHARE * n)), replace=False)] = True
    images = fx.images.copy()
    images[poison] = trig.get_trigger(trigger).apply(images[poison], seed)
    return images, poison


def fmt(values: list[float], digits: int = 2) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def bench_detect() -> str:
    enc_rows: dict[str, dict[str, list[float]]] = {}
    success: dict[str, dict[str, list[float]]] = {}
    pool: dict[tuple[str, str], dict[str, list[float]]] = {}
    train_s, scan_s = [], []
    for seed in ENCODER_SEEDS:
        with sb.one_thread():
            fx = sb.build(sb.FixtureConfig(seed=seed))
            train_s.append(sum(fx.seconds.values()))
            for name in fx.backdoored:
                for key, val in sb.attack_success(fx, name).items():
                    success.setdefault(name, {}).setdefault(key, []).append(val)
            x, y = fx.held_out()
            x, y = x[:SCAN_IMAGES], y[:SCAN_IMAGES]
            for name, model in [("clean", fx.clean), *fx.backdoored.items()]:
                t0 = time.perf_counter()
                r = bd.scan_encoder(sb.encoder_fn(model), x, labels=y, seed=seed, device="cpu")
                scan_s.append(time.perf_counter() - t0)
                m = r.metrics
                row = enc_rows.setdefault(name, {})
                for trigger in sb.BACKDOOR_TRIGGERS:
                    for key in (f"collapse_{trigger}", f"collapse_{trigger}_excess", f"knn_asr_{trigger}"):
                        row.setdefault(key, []).append(m[key])
                for key in ("collapse_clean", "collapse_raw_clean", "collapse_excess_max", "decree_pl1",
                            "decree_steps", "backdoor_risk"):
                    row.setdefault(key, []).append(m[key])
                row.setdefault("flagged", []).append(float(r.figures["verdict"]["flagged"]))
            for trigger in sb.BACKDOOR_TRIGGERS:
                for pseed in POOL_SEEDS:
                    images, poison = poisoned_pool(fx, trigger, pseed)
                    for enc_name, model in ((trigger, fx.backdoored[trigger]), ("clean", fx.clean)):
                        z = sb.embed(model, images).numpy()
                        m = bd.scan_pool(z, images=images, poison=poison, seed=pseed, device="cpu").metrics
                        cell = pool.setdefault((trigger, enc_name), {})
                        for score in bd.POOL_SCORES:
                            for suffix in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"):
                                cell.setdefault(f"{score}_{suffix}", []).append(m[f"{score}_{suffix}"])

    names = ["clean", *sb.BACKDOOR_TRIGGERS]
    lines = ["### Attack success of the fixtures (held-out images; benchmarks/simclr_backdoor.attack_success)", "",
             "| backdoor | k-NN ASR | base rate into target | utility cos(f′(x), f(x)) | cos(f′(T(x)), f(x_ref)) |",
             "|---|---|---|---|---|"]
    for name in sb.BACKDOOR_TRIGGERS:
        s = success[name]
        lines.append(f"| {name} | {fmt(s['asr'])} | {fmt(s['asr_clean'])} | {fmt(s['utility'], 3)} | "
                     f"{fmt(s['cos_ref'], 3)} |")
    lines += ["", "### Encoder scan (scan_encoder defaults; rows: metric, columns: encoder)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    keys = ["collapse_clean", "collapse_raw_clean"]
    for trigger in sb.BACKDOOR_TRIGGERS:
        keys += [f"collapse_{trigger}", f"collapse_{trigger}_excess", f"knn_asr_{trigger}"]
    keys += ["collapse_excess_max", "decree_pl1", "decree_steps", "backdoor_risk", "flagged"]
    for key in keys:
        digits = 0 if key == "decree_steps" else 3
        lines.append(f"| {key} | " + " | ".join(fmt(enc_rows[n][key], digits) for n in names) + " |")
    lines += ["", f"### Pool scan: {POOL_SHARE:.0%} of the {len(fx.images)} images carry the trigger "
              f"(AUROC / TPR@1 % FPR / TPR@5 % FPR, mean ± std over {len(POOL_SEEDS)} poison draws × "
              f"{len(ENCODER_SEEDS)} encoder seeds)", "",
              "| pool trigger | embeddings from | " + " | ".join(bd.POOL_SCORES) + " |",
              "|---|---|" + "---|" * len(bd.POOL_SCORES)]
    for (trigger, enc_name), cell in pool.items():
        enc_label = f"{trigger}-backdoored" if enc_name != "clean" else "clean (control)"
        vals = [f"{fmt(cell[f'{s}_auroc'])} / {fmt(cell[f'{s}_tpr_at_1pct_fpr'])} / {fmt(cell[f'{s}_tpr_at_5pct_fpr'])}"
                for s in bd.POOL_SCORES]
        lines.append(f"| {trigger} | {enc_label} | " + " | ".join(vals) + " |")
    timing = (f"Fixture training (SimCLR + 3 backdoors, one thread, recorded when trained): "
              f"{fmt(train_s, 0)} s per seed; scan_encoder: {fmt(scan_s, 1)} s per encoder "
              f"({SCAN_IMAGES} images, 5 triggers + controls, k-NN ASR, DECREE to its stop rule).")
    return "\n".join(lines) + "\n\n" + timing


def bench_decree_natural() -> str:
    """DECREE (decree.py defaults) on the natural-image fixtures' 512 scan crops; raw-cosine rows for seed 0."""
    import importlib

    import torch

    dmod = importlib.import_module("worker.suites.backdoor.decree")
    fx = nbk.load()
    models = {"clean": fx.clean, **fx.backdoored}
    rows = []
    for name, model in models.items():
        model.requires_grad_(False)
        for sim, seeds in (("centred", DECREE_SEEDS), ("raw", DECREE_SEEDS[:1])):
            cell: dict[str, list[float]] = {}
            for seed in seeds:
                with sb.one_thread():
                    r = dmod.decree(sb.encoder_fn(model), fx.scan, similarity=sim, trigger_region=nbk.trigger_box(),
                                    seed=seed, device=torch.device("cpu"))  # fmt: skip
                m = r.mask[..., None]
                stamped = np.clip(np.round((1 - m) * fx.scan + m * r.pattern * 255), 0, 255).astype(np.uint8)
                a = nbk.attack_success(fx, model, stamped)
                for key, val in (("pl1", r.pl1), ("in", r.mask_in_region), ("first", r.first_success_step or 0),
                                 ("steps", r.steps), ("s", r.seconds), ("cos_ref", a["cos_ref"]),
                                 ("collapse", a["collapse"])):  # fmt: skip
                    cell.setdefault(key, []).append(float(val))
            rows.append(f"| {name} | {sim} | {fmt(cell['pl1'], 4)} | {fmt(cell['in'], 3)} | "
                        f"{fmt(cell['first'], 0)} | {fmt(cell['steps'], 0)} | {fmt(cell['cos_ref'], 3)} | "
                        f"{fmt(cell['collapse'], 3)} | {fmt(cell['s'], 1)} |")  # fmt: skip
    share = 25 / 1024
    head = ("### DECREE on natural-image fixtures (benchmarks/natural_backdoor.py; 512 scan crops, batch 128, "
            f"seeds {list(DECREE_SEEDS)} centred, seed 0 raw)\n\n"
            f"Trigger: white 5×5 at rows/cols 24–28 (a uniform mask puts {share:.3f} of its mass there). "
            "`patch`: BadEncoder's loss as written; `patch_blend`: triggered training crops at opacity U(0.25, 1). "
            "cos_ref / collapse: the recovered mask and pattern stamped on the crops, then the encoder's mean "
            "cosine to its embedding of the attacker's reference input / centred collapse.\n\n"
            "| encoder | cosine | PL1 | mask mass in trigger | first success step | steps | recovered stamp "
            "cos_ref | recovered stamp collapse | seconds |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    return head + "\n" + "\n".join(rows)


def sklearn_scores(z: np.ndarray, k: int, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What a user would otherwise run: brute-force cosine NearestNeighbors, KMeans, numpy SVD per cluster."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    zc = z - z.mean(axis=0)
    dist, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(zc).kneighbors(zc)
    density = (1 - dist[:, 1:]).mean(axis=1)
    zn = zc / np.linalg.norm(zc, axis=1, keepdims=True)
    labels = KMeans(n_clusters, n_init=1, random_state=seed).fit_predict(zn)
    spectral = np.zeros(len(z))
    for c in range(n_clusters):
        idx = labels == c
        x = zc[idx] - zc[idx].mean(axis=0)
        v = np.linalg.svd(x, full_matrices=False)[2][0]
        spectral[idx] = np.abs(x @ v)
    return density, spectral


def bench_speed(n: int = 20_000, d: int = 256) -> str:
    rng = np.random.default_rng(0)
    z = np.maximum(rng.standard_normal((n, d)) * (0.97 ** np.arange(d)) + 0.3, 0).astype(np.float32)  # ReLU-like
    poison = np.zeros(n, bool)
    poison[rng.choice(n, n // 100, replace=False)] = True
    z[poison] = np.maximum(z[poison] * 0.3 + rng.standard_normal(d).astype(np.float32), 0)  # a collapsed cluster
    t_ref, (density, spectral) = best_of(lambda: sklearn_scores(z, bd.POOL_K, bd.DEFAULT_CLUSTERS, 0), repeats=1)
    t_ours, res = best_of(lambda: bd.scan_pool(z, poison=poison, device="cpu"), repeats=2)
    zc = (z - z.astype(np.float64).mean(axis=0)).astype(np.float32)
    dens_ours = bd.knn_density(zc, bd.POOL_K, device="cpu")
    err = float(np.abs(dens_ours - density).max())
    return (f"| CPU pool scan {n} x {d} float32 (k-NN density + k-means + spectral; 1 % collapsed poisons) | "
            f"sklearn NearestNeighbors(brute, cosine) + KMeans(n_init=1) + numpy SVD {t_ref:.2f} s | "
            f"scan_pool {t_ours:.2f} s (also ROC curves, histograms, top-k) | **{t_ref / t_ours:.1f}x** | "
            f"k-NN density max abs diff {err:.1e}; AUROC ours/sklearn: density {res.metrics['knn_density_auroc']:.3f}/"
            f"{bd.auroc(density, poison):.3f}, spectral {res.metrics['spectral_auroc']:.3f}/"
            f"{bd.auroc(spectral, poison):.3f} |")


def bench_gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        return "| GPU | no CUDA device on this machine | | | |"
    rows = []
    fx = sb.build()
    x, y = fx.held_out()
    x, y = x[:SCAN_IMAGES], y[:SCAN_IMAGES]
    for name, model in (("clean", fx.clean), ("badencoder", fx.backdoored["badencoder"])):
        res = {}
        for dev in ("cpu", "cuda"):
            model.to(dev)
            t0 = time.perf_counter()
            res[dev] = bd.scan_encoder(sb.encoder_fn(model), x, labels=y, device=dev)
            torch.cuda.synchronize()
            res[dev + "_s"] = time.perf_counter() - t0
        model.to("cpu")
        diff = max(abs(res["cpu"].metrics[k] - res["cuda"].metrics[k]) for k in res["cpu"].metrics
                   if k.startswith("collapse_"))  # fmt: skip
        rows.append(f"| scan_encoder, {name} fixture, {SCAN_IMAGES} images | CPU {res['cpu_s']:.1f} s, "
                    f"PL1 {res['cpu'].metrics['decree_pl1']:.3f}, risk {res['cpu'].metrics['backdoor_risk']:.2f} | "
                    f"GPU {res['cuda_s']:.1f} s, PL1 {res['cuda'].metrics['decree_pl1']:.3f}, risk "
                    f"{res['cuda'].metrics['backdoor_risk']:.2f} | {res['cpu_s'] / res['cuda_s']:.1f}x | "
                    f"max |Δ| of collapse metrics CPU vs GPU {diff:.1e} |")
    rng = np.random.default_rng(0)
    n, d = 200_000, 768
    z = np.maximum(rng.standard_normal((n, d), dtype=np.float32) + 0.3, 0)
    poison = np.zeros(n, bool)
    poison[rng.choice(n, n // 100, replace=False)] = True
    z[poison] = np.maximum(0.3 * z[poison] + rng.standard_normal(d, dtype=np.float32), 0)
    bd.scan_pool(z[:20_000], poison=poison[:20_000], device="cuda")  # warm up
    t_gpu, r = best_of(lambda: (bd.scan_pool(z, poison=poison, device="cuda"), torch.cuda.synchronize())[0], 2)
    rows.append(f"| scan_pool {n} x {d} float32 on the GPU | — | {t_gpu:.1f} s | | AUROC density "
                f"{r.metrics['knn_density_auroc']:.3f}, spectral {r.metrics['spectral_auroc']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    import torch

    which = [c for c in ("detect", "speed", "gpu") if c in argv] or (
        ["detect", "speed"] + (["gpu"] if torch.cuda.is_available() else []))
    date = time.strftime("%Y-%m-%d")
    if "detect" in which:
        t0 = time.perf_counter()
        body = bench_detect() + "\n\n" + bench_decree_natural()
        total = time.perf_counter() - t0
        print(body, flush=True)
        write_section("backdoor", f"## Backdoor suite: detection on tiny SimCLR encoders\n\nMachine: {machine()}. "
                      f"One process, {date}, {total:.0f} s in all. Encoder seeds {list(ENCODER_SEEDS)}, pool poison "
                      f"draws {list(POOL_SEEDS)}; values are mean ± std over them.\n\n"
                      "Fixtures: benchmarks/simclr_backdoor.py (TinyConvNet, 100 SimCLR steps on 1 920 `shapes` "
                      "images; BadEncoder-style fine-tunes of 100 steps). k-NN labels are the background-luminance "
                      "terciles the encoder represents (it does not learn the shape classes in 100 steps). "
                      "Pool embeddings from the backdoored encoder model the state after a successful attack; "
                      "the clean-encoder rows are the control (nothing to find in the embeddings).\n\n" + body)
    if "speed" in which:
        row = bench_speed()
        print(row, flush=True)
        header = "| case | baseline | repscope | speed-up | notes |\n|---|---|---|---|---|"
        write_section("backdoor-speed", f"## Backdoor suite, pool-scan speed\n\nMachine: {machine()}. Best of "
                      f"2 runs (baseline: 1), one process, {date}.\n\n{header}\n{row}")
    if "gpu" in which:
        rows = bench_gpu()
        print(rows, flush=True)
        header = "| case | CPU / reference | GPU / repscope | speed-up | notes |\n|---|---|---|---|---|"
        write_section("backdoor-gpu", f"## Backdoor suite on the GPU\n\nMachine: {machine()}. One process, {date}."
                      f"\n\n{header}\n{rows}")


if __name__ == "__main__":
    main(sys.argv[1:])
