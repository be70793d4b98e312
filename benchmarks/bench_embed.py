"""Embedding pipeline overhead: repscope's embed() against the bare forward a user would time.

  cpu  resnet18_cifar on 32 x 32 images, fp32: embed (uint8 numpy -> tensor, /255, normalise, forward,
       copy back) vs the bare forward over pre-made normalised float batches. Bar: overhead < 20 %.
  gpu  resnet50 at 224 px, bf16 autocast, channels_last: embed from uint8 host images (224 px as stored,
       and 64 px resized on the GPU) vs the bare forward on one float batch already on the GPU.
       Bar: embed >= 70 % of bare throughput.

Usage: python -m benchmarks.bench_embed [cpu] [gpu]   (default: cpu, plus gpu when CUDA exists)
Imports only torch / numpy (no pydantic), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torchvision.models import resnet50

from benchmarks.common import best_of, machine, write_section
from worker.embed import embed
from worker.models.cifar import resnet18_cifar

CPU_N, CPU_SIZE, CPU_BATCH = 512, 32, 256
GPU_N, GPU_SIZE, GPU_BATCH = 16_384, 224, 256
CPU_BAR, GPU_BAR = 0.20, 0.70
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def uint8_images(n: int, size: int, seed: int = 0, block: int = 1024) -> np.ndarray:
    """n random uint8 images, a random block tiled (generating gigabytes of random bytes is slow)."""
    base = np.random.default_rng(seed).integers(0, 256, (min(n, block), size, size, 3), dtype=np.uint8)
    reps = -(-n // len(base))
    return np.ascontiguousarray(np.tile(base, (reps, 1, 1, 1))[:n])


def bench_cpu(n: int = CPU_N, batch: int = CPU_BATCH) -> str:
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    images = uint8_images(n, CPU_SIZE)
    batches = [
        (
            (torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
        ).contiguous()
        for i in range(0, n, batch)
    ]

    def bare() -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([model(b) for b in batches]).numpy()

    def ours() -> np.ndarray:
        return embed(model, images, batch_size=batch, device="cpu")

    bare(), ours()  # warm up oneDNN primitives for every batch shape
    t_bare, ref = best_of(bare, repeats=3)
    t_ours, z = best_of(ours, repeats=3)
    err = float(np.abs(z - ref).max())
    overhead = t_ours / t_bare - 1
    verdict = "pass" if overhead < CPU_BAR else "FAIL"
    return (
        f"| CPU resnet18_cifar, {n} x {CPU_SIZE}px, batch {batch}, fp32 | bare forward on float tensors "
        f"{t_bare:.2f} s ({n / t_bare:.0f} img/s) | embed from uint8 {t_ours:.2f} s ({n / t_ours:.0f} img/s) | "
        f"overhead **{overhead * 100:+.1f} %** (bar < {CPU_BAR * 100:.0f} %: {verdict}) | max |diff| {err:.1e} |"
    )


def bench_gpu(
    n: int = GPU_N,
    batch: int = GPU_BATCH,
    *,
    device: str = "cuda",
    size: int = GPU_SIZE,
    sources: tuple[int, ...] = (GPU_SIZE, 64),
    model_fn=resnet50,
) -> str:
    """device / size / sources / model_fn exist for a dry run of this code on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "| GPU | no CUDA device on this machine | | | |"
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = model_fn().eval().to(dev, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    steps = -(-n // batch)

    def bare() -> None:
        outs = []
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            for _ in range(steps):
                outs.append(model(x))
        if cuda:
            torch.cuda.synchronize()

    rows = []
    bare()
    t_bare, _ = best_of(bare, repeats=3)
    bare_ips = steps * batch / t_bare
    for src in sources:
        images = uint8_images(n, src)

        def ours(images=images) -> np.ndarray:
            return embed(model, images, batch_size=batch, image_size=size, device=dev)

        ours(images[: 4 * batch])  # warm up
        t_ours, z = best_of(ours, repeats=3)
        ips = n / t_ours
        ratio = ips / bare_ips
        fp32 = embed(model, images[:batch], image_size=size, device=dev, amp=False)
        cos = np.sum(z[:batch] * fp32, 1) / (np.linalg.norm(z[:batch], axis=1) * np.linalg.norm(fp32, axis=1))
        verdict = "pass" if ratio >= GPU_BAR else "FAIL"
        rows.append(
            f"| {'GPU' if cuda else 'CPU dry run'} {type(model).__name__} {size}px bf16 channels_last, "
            f"{n} uint8 images stored at {src}px, batch {batch} | "
            f"bare forward on a device tensor {bare_ips:,.0f} img/s | embed {ips:,.0f} img/s | "
            f"**{ratio * 100:.0f} %** of bare (bar >= {GPU_BAR * 100:.0f} %: {verdict}) | "
            f"bf16 vs fp32 cosine min {cos.min():.4f} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    which = set(argv) or {"cpu"} | ({"gpu"} if torch.cuda.is_available() else set())
    header = "| case | baseline | repscope | ratio | notes |\n|---|---|---|---|---|"
    date = time.strftime("%Y-%m-%d")
    for name, fn, title in (("cpu", bench_cpu, "embed"), ("gpu", bench_gpu, "embed-gpu")):
        if name not in which:
            continue
        line = fn()
        print(line)
        write_section(title, f"## Embedding pipeline{' (GPU)' if name == 'gpu' else ''}\n\nMachine: {machine()}. "
                      f"Best of 3 runs, one process, {date}.\n\n{header}\n{line}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
