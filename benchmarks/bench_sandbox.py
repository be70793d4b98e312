"""Sandbox overhead: embedding a checkpoint in the bubblewrap child against doing it in-process.

  cpu  resnet18_cifar (random init) saved as TorchScript, N uint8 images of 32 x 32, fp32, default batch:
       in-process load_encoder + embed (what the worker did before the sandbox) vs worker.sandbox.run_job
       (write the images to the input dir, start bwrap + Python + torch, load + vet the graphs, embed, write
       .npy, read it back validated). Best of interleaved rounds (the machine's speed drifts); the
       embeddings must be equal bit for bit. Bar: sandboxed overhead <= 10 % of the embedding time.

Usage: python -m benchmarks.bench_sandbox [N]   (default 4096)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_embed import uint8_images
from benchmarks.common import best_of_interleaved, machine, write_section
from worker.embed import embed
from worker.models.cifar import resnet18_cifar
from worker.models.loading import load_encoder
from worker.sandbox import EncoderJob, run_job

N, SIZE, ROUNDS = 4096, 32, 3
BAR = 0.10


def bench(n: int = N, rounds: int = ROUNDS) -> str:
    torch.manual_seed(0)
    images = uint8_images(n, SIZE)
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        path = Path(tmp) / "resnet18_cifar.pt"
        torch.jit.save(torch.jit.script(resnet18_cifar().eval()), path)
        threads = torch.get_num_threads()

        def in_process() -> np.ndarray:
            return embed(load_encoder(path), images, device="cpu")

        def sandboxed() -> np.ndarray:
            job = EncoderJob(task="embed", threads=threads)
            return run_job(job, path, images, progress=lambda f, m: None).arrays["embeddings"]

        in_process()  # warm up oneDNN and the page cache for both
        best = best_of_interleaved({"in": in_process, "sandbox": sandboxed}, rounds=rounds)
    (t_in, z_in), (t_box, z_box) = best["in"], best["sandbox"]
    same = bool(np.array_equal(z_in, z_box))
    overhead = t_box / t_in - 1
    verdict = "pass" if overhead <= BAR and same else "FAIL"
    return (
        f"| CPU resnet18_cifar TorchScript, {n} x {SIZE}px uint8, fp32, {threads} threads | in-process load + "
        f"embed {t_in:.2f} s ({n / t_in:.0f} img/s) | sandboxed (bwrap child: start, load, vet, embed, "
        f"read back) {t_box:.2f} s ({n / t_box:.0f} img/s) | overhead **{overhead * 100:+.1f} %** "
        f"(bar <= {BAR * 100:.0f} %: {verdict}) | embeddings bit-identical: {same} |"
    )


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv and argv[0].isdigit() else N
    line = bench(n)
    print(line)
    header = "| case | baseline | repscope | ratio | notes |\n|---|---|---|---|---|"
    write_section("sandbox", f"## Model sandbox overhead (embed step)\n\nMachine: {machine()}. Best of "
                  f"{ROUNDS} interleaved rounds, one process, {time.strftime('%Y-%m-%d')}.\n\n{header}\n{line}")


if __name__ == "__main__":
    main(sys.argv[1:])
