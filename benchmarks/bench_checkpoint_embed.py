"""Checkpoint embedding throughput: embed(load_encoder(state_dict, arch=<timm name>)) against the bare loop.

For timm vit_small_patch16_224 and resnet50 (random init: ``timm.create_model(name, pretrained=False,
num_classes=0)``, saved as a state_dict file, loaded through ``worker.models.load_encoder(path, arch=name)``):
  repscope  embed(encoder, images): uint8 numpy -> device -> float -> the model's eval preprocessing (timm
            pretrained_cfg: shorter side floor(224 / crop_pct), centre crop 224, normalise) -> forward -> host
  bare      the loop a user would write on the timm model itself: the same uint8 batches -> float / 255 ->
            F.interpolate(bicubic, antialias) -> centre crop -> normalise -> model(x), torch.inference_mode
Same images (random uint8, 224 x 224 x 3), same batch size, one process; the two alternate with the order swapped
each round, and the median of the per-round throughput ratios is reported. Bar: repscope >= 90 % of bare.
`gpu` (CUDA): bf16 autocast and channels_last in both, uint8 batches through pinned memory in both.

Usage: python -m benchmarks.bench_checkpoint_embed [cpu] [gpu] [--quick] [--n N] [--batch B] [--rounds R]
       [--no-write]   (default: cpu, plus gpu when CUDA exists; --quick: a tiny smoke run that writes nothing)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench_embed import uint8_images
from benchmarks.common import machine, write_section
from worker.embed import embed
from worker.models import load_encoder

MODELS = ("vit_small_patch16_224", "resnet50")
SIZE = 224  # stored image size
CPU = {"n": 48, "batch": 16, "rounds": 5}  # under 2 minutes on 2 cores (resnet50 ~5-15 img/s there)
GPU = {"n": 8192, "batch": 256, "rounds": 5}
QUICK = {"n": 8, "batch": 4, "rounds": 1}
BAR = 0.90


def bare_loop(model: torch.nn.Module, images: np.ndarray, batch: int, dev: torch.device):
    """The user's own pipeline from timm's data config (resolve_model_data_config), written out by hand."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    crop = cfg["input_size"][1]
    short = math.floor(crop / cfg["crop_pct"])
    mean = torch.tensor(cfg["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=dev).view(1, 3, 1, 1)
    cuda = dev.type == "cuda"

    def run() -> np.ndarray:
        outs = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            for i in range(0, len(images), batch):
                u8 = torch.from_numpy(images[i : i + batch])
                u8 = u8.pin_memory().to(dev, non_blocking=True) if cuda else u8
                x = u8.permute(0, 3, 1, 2).float() / 255
                h, w = x.shape[-2:]
                size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
                x = F.interpolate(
                    x, size=size, mode=cfg["interpolation"], align_corners=False, antialias=True
                )
                top, left = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
                x = (x[..., top : top + crop, left : left + crop] - mean) / std
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                outs.append(model(x))
            return torch.cat(outs).float().cpu().numpy()

    return run


def bench_model(name: str, n: int, batch: int, rounds: int, device: str) -> str:
    import timm

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"| GPU {name} | no CUDA device on this machine | | | |"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    with tempfile.TemporaryDirectory(prefix="repscope-bench-") as tmp:
        path = Path(tmp) / f"{name}.pth"
        torch.save(model.state_dict(), path)
        t0 = time.perf_counter()
        encoder = load_encoder(path, arch=name)
        t_load = time.perf_counter() - t0
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = uint8_images(n, SIZE)
    bare = bare_loop(model, images, batch, dev)

    def ours() -> np.ndarray:
        return embed(encoder, images, batch_size=batch, device=dev)

    embed(
        encoder, images[:batch], batch_size=batch, device=dev
    )  # warm up: oneDNN primitives / cuDNN autotuning
    bare_loop(model, images[:batch], batch, dev)()
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    outs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        order = (("bare", bare), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("bare", bare))
        for key, fn in order:
            t0 = time.perf_counter()
            outs[key] = fn()
            times[key].append(time.perf_counter() - t0)
    ratios = [b / o for b, o in zip(times["bare"], times["ours"], strict=True)]
    ratio = statistics.median(ratios)
    rel = float(np.abs(outs["ours"] - outs["bare"]).max() / max(np.abs(outs["bare"]).max(), 1e-12))
    prep = encoder.preprocessing
    where = "GPU bf16 channels_last" if dev.type == "cuda" else "CPU fp32"
    verdict = "pass" if ratio >= BAR else "FAIL"
    return (
        f"| {where} timm {name} (random init, state_dict via load_encoder in {t_load:.1f} s), {n} x {SIZE}px uint8, "
        f"batch {batch} | bare loop {n / min(times['bare']):,.1f} img/s (best round) | "
        f"embed {n / min(times['ours']):,.1f} img/s (best round) | **{ratio * 100:.0f} %** of bare (median of "
        f"{rounds}; bar >= {BAR * 100:.0f} %: {verdict}) | per round {' / '.join(f'{r:.2f}' for r in ratios)}; "
        f"resize {prep.resize} {prep.interpolation}, crop {prep.crop[0]}; max rel. diff {rel:.1e} |"
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help="cpu and / or gpu (default: cpu, plus gpu when CUDA exists)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (8 images, 1 round); writes nothing")
    ap.add_argument("--n", type=int, help="number of images")
    ap.add_argument("--batch", type=int, help="batch size")
    ap.add_argument("--rounds", type=int, help="alternating rounds (median ratio reported)")
    ap.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md alone")
    args, _ = ap.parse_known_args(argv)  # `python -m benchmarks` passes every benchmark the same arguments
    which = {w for w in args.which if w in ("cpu", "gpu")}
    which = which or {"cpu"} | ({"gpu"} if torch.cuda.is_available() else set())
    header = "| case | baseline | repscope | ratio | notes |\n|---|---|---|---|---|"
    for kind, device, title in (("cpu", "cpu", "checkpoint-embed"), ("gpu", "cuda", "checkpoint-embed-gpu")):
        if kind not in which:
            continue
        cfg = dict(QUICK if args.quick else CPU if kind == "cpu" else GPU)
        cfg.update({k: getattr(args, k) for k in ("n", "batch", "rounds") if getattr(args, k)})
        rows = []
        for name in MODELS:
            rows.append(bench_model(name, cfg["n"], cfg["batch"], cfg["rounds"], device))
            print(rows[-1], flush=True)
        if args.quick or args.no_write:
            continue
        write_section(title, f"## Checkpoint embedding throughput{' (GPU)' if kind == 'gpu' else ''}\n\n"
                      f"Machine: {machine()}. {cfg['rounds']} rounds, bare and embed alternating (order swapped "
                      f"each round), one process, {time.strftime('%Y-%m-%d')}.\n\n{header}\n" + "\n".join(rows))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
