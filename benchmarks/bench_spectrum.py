"""Spectrum suite speed and memory against what a user would otherwise run.

  cpu     RankMe of 25 600 x 2 048 float32: repscope's float64 Gram + eigvalsh vs numpy.linalg.svd(compute_uv=False)
  gpu     25 600 x 8 192 float32 from a .npy file to the full spectrum result vs the bare Gram + eigvalsh on the GPU
  memory  2 000 000 x 768 float16 memory-mapped .npy: peak RSS of a fresh process running the suite

Usage: python -m benchmarks.bench_spectrum [cpu] [gpu] [memory]   (default: cpu memory, plus gpu when CUDA exists)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import best_of, best_of_interleaved, machine, write_section
from worker.suites.base import no_progress
from worker.suites.spectrum import gram_spectrum, rankme, run_spectrum
from worker.suites.spectrum.gram import accumulate as _accumulate
from worker.suites.spectrum.gram import eigvalsh as _eigvalsh


def embeddings(n: int, d: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Decaying spectrum plus an offset, like real SSL features; generated in row blocks to save memory."""
    rng = np.random.default_rng(seed)
    scales = (0.97 ** np.arange(d)).astype(np.float32) + 0.01
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        out[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32) * scales + 0.05
    return out


def rankme_svd(z: np.ndarray) -> float:
    s = np.linalg.svd(z, compute_uv=False).astype(np.float64)
    return rankme(s)


def bench_cpu(n: int = 25_600, d: int = 2_048, rounds: int = 3) -> str:
    z = embeddings(n, d)
    rankme(gram_spectrum(z[:1024], device="cpu"))  # load the BLAS/LAPACK code paths once
    best = best_of_interleaved({"svd": lambda: rankme_svd(z), "ours": lambda: rankme(gram_spectrum(z, device="cpu"))},
                               rounds=rounds)
    (t_svd, ref), (t_gram, ours) = best["svd"], best["ours"]
    t_pass, moments = best_of(lambda: _accumulate(z, None, torch.device("cpu"), 8192, (), no_progress), repeats=rounds)
    t_eig, _ = best_of(lambda: _eigvalsh(moments.raw_gram(d)), repeats=rounds)
    z64 = z.astype(np.float64)
    exact = rankme(np.linalg.svd(z64, compute_uv=False))
    t_suite, _ = best_of(lambda: run_spectrum(z, device="cpu"), repeats=1)
    rel_ours, rel_svd32 = abs(ours - exact) / exact, abs(ref - exact) / exact
    flops = n * d * (d + 1)  # dsyrk
    return (f"| CPU RankMe {n} x {d} float32 | numpy.linalg.svd (float32) {t_svd:.2f} s | "
            f"Gram float64 + eigvalsh {t_gram:.2f} s (Gram pass {t_pass:.2f} s = {flops / t_pass / 1e9:.0f} "
            f"GFLOP/s, dsyevd {t_eig:.2f} s, each timed apart) | **{t_svd / t_gram:.1f}x** | "
            f"best of {rounds} interleaved rounds; rel. error vs float64 SVD: ours {rel_ours:.1e}, numpy float32 "
            f"SVD {rel_svd32:.1e}; whole suite (all metrics + Matryoshka) {t_suite:.2f} s |")


def bench_gpu(n: int = 25_600, d: int = 8_192) -> str:
    if not torch.cuda.is_available():
        return "| GPU | no CUDA device on this machine | | | |"
    dev = torch.device("cuda")
    z = embeddings(n, d)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "z.npy"
        np.save(path, z)

        def bare() -> float:
            zt = torch.from_numpy(z).to(dev).double()
            lam = torch.linalg.eigvalsh(zt.T @ zt)
            s = lam.clamp_min(0).sqrt().flip(0)
            torch.cuda.synchronize()
            return rankme(s.cpu().numpy())

        def end_to_end_rankme() -> float:
            return rankme(gram_spectrum(np.load(path, mmap_mode="r"), device=dev))

        def end_to_end_suite():
            return run_spectrum(np.load(path, mmap_mode="r"), device=dev)

        bare()  # warm up CUDA, cuSOLVER and the page cache
        end_to_end_suite()
        t_bare, ref = best_of(bare, repeats=3)
        t_rank, ours = best_of(end_to_end_rankme, repeats=3)
        t_suite, result = best_of(end_to_end_suite, repeats=3)
    rel = abs(ours - ref) / ref
    return (f"| GPU {n} x {d} float32, from .npy | bare Gram + eigvalsh (tensor already in memory) {t_bare:.3f} s | "
            f"RankMe from file {t_rank:.3f} s ({t_rank / t_bare:.2f}x of bare); whole suite from file "
            f"{t_suite:.3f} s ({t_suite / t_bare:.2f}x of bare) | | RankMe rel. diff {rel:.1e} |")


# Peak RSS from VmHWM: unlike ru_maxrss it is reset by exec, so the parent's memory does not leak into it.
MEMORY_CHILD = """
import re, sys, numpy as np
from worker.suites.spectrum import run_spectrum
z = np.load(sys.argv[1], mmap_mode="r")
max_rows = int(sys.argv[2])
r = run_spectrum(z, device="cpu", max_rows=max_rows, uniformity_max_rows=10_000)
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(hwm_kb / 1024, r.metrics["rankme"], r.variant["n_rows_used"])
"""


def bench_memory(n: int = 2_000_000, d: int = 768) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
        for start in range(0, n, 100_000):
            mm[start:start + 100_000] = embeddings(min(100_000, n - start), d, seed=start)
        mm.flush()
        del mm
        size_gb = path.stat().st_size / 1e9
        for label, max_rows in (("default (25 600-row subsample)", 25_600), ("every row (max_rows = N)", n)):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), str(max_rows)],
                                 capture_output=True, text=True, check=True)
            secs = time.perf_counter() - t0
            rss_mb, value, used = out.stdout.split()
            rows.append(f"| memory {n} x {d} float16 .npy ({size_gb:.1f} GB), {label} | "
                        f"peak RSS {float(rss_mb):.0f} MB (bar: 1 500 MB) | {secs:.1f} s | rows used {used} | "
                        f"RankMe {float(value):.3f} |")
    return "\n".join(rows)


CASES = {"cpu": ("Spectrum suite, CPU speed", bench_cpu), "gpu": ("Spectrum suite, GPU speed", bench_gpu),
         "memory": ("Spectrum suite, memory at scale", bench_memory)}


def main(argv: list[str]) -> None:
    which = [c for c in CASES if c in argv] or ["cpu", "memory"] + (["gpu"] if torch.cuda.is_available() else [])
    header = "| case | baseline | repscope | speed-up | notes |\n|---|---|---|---|---|"
    for case in which:
        title, bench = CASES[case]
        rows = bench()
        print(rows, flush=True)
        write_section(f"spectrum-{case}", f"## {title}\n\nMachine: {machine()}. Best of several runs, one process, "
                                          f"{time.strftime('%Y-%m-%d')}.\n\n{header}\n{rows}")


if __name__ == "__main__":
    main(sys.argv[1:])
