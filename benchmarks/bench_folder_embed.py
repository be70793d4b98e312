"""Folder embedding throughput: repscope's streamed embed (worker.embed_stream) vs the loop a user writes.

A tree of JPEGs (random content, 160-320 px sides, 10 classes) is embedded by torchvision's ResNet-18 (random
init), eval transform Resize(128) + CenterCrop(112) + Normalize (smaller than ImageNet's 256 / 224 so a round
stays short on 2 cores; decode and transform costs are the same per image):
  repscope  embed_files(model, folder, paths, prep): DataLoader workers decoding each image with PIL and applying
            worker.datasets.eval_transform, batches through the model, features into a memory-mapped .npy
  bare      torchvision.datasets.ImageFolder + transforms.Compose([Resize, CenterCrop, ToTensor, Normalize]) +
            DataLoader(num_workers, batch_size) + model(x) under torch.inference_mode, features concatenated
Same workers (the CPU count), batch size, files; one process; the two alternate with the order swapped each
round; the median of per-round throughput ratios is reported. Bar: repscope >= 95 % of bare, same features.

Usage: python -m benchmarks.bench_folder_embed [--quick] [--n N] [--rounds R] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmarks.common import machine, write_section
from worker.datasets.preprocessing import Preprocessing
from worker.datasets.readers import folder_items
from worker.embed_stream import embed_files

RESIZE, CROP = 128, 112
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT = {"n": 1000, "rounds": 5, "batch": 64}
QUICK = {"n": 40, "rounds": 1, "batch": 8}
BAR = 0.95


def jpeg_tree(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = root / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(160, 320, 2)
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        arr = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]  # blocky content: realistic JPEG sizes
        Image.fromarray(arr).save(cls / f"{i:06d}.jpg", quality=90)


def bare(model: torch.nn.Module, root: Path, batch: int, workers: int) -> np.ndarray:
    t = torchvision.transforms
    tf = t.Compose([t.Resize(RESIZE), t.CenterCrop(CROP), t.ToTensor(), t.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(root), transform=tf),
                                         batch_size=batch, num_workers=workers)
    outs = []
    with torch.inference_mode():
        for x, _ in loader:
            outs.append(model(x))
    return torch.cat(outs).numpy()


def run(n: int, rounds: int, batch: int) -> str:
    workers = os.cpu_count() or 1
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.eval()
    prep = Preprocessing(crop=(CROP, CROP), resize=RESIZE, mean=MEAN, std=STD, source="bench")
    with tempfile.TemporaryDirectory(prefix="repscope-bench-folder-") as tmp:
        root = Path(tmp) / "tree"
        jpeg_tree(root, n)
        listed = folder_items(root, [root])

        def ours() -> np.ndarray:
            embed_files(model, str(listed.folder), listed.paths, prep, Path(tmp) / "z.npy", batch_size=batch,
                        workers=workers)
            return np.load(Path(tmp) / "z.npy")

        times: dict[str, list[float]] = {"bare": [], "ours": []}
        outs: dict[str, np.ndarray] = {}
        for r in range(rounds):
            order = (("bare", lambda: bare(model, root, batch, workers)), ("ours", ours))
            for key, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                outs[key] = fn()
                times[key].append(time.perf_counter() - t0)
    ratios = [b / o for b, o in zip(times["bare"], times["ours"], strict=True)]
    ratio = statistics.median(ratios)
    rel = float(np.abs(outs["ours"] - outs["bare"]).max() / np.abs(outs["bare"]).max())
    verdict = "pass" if ratio >= BAR else "FAIL"
    return (f"| CPU fp32 torchvision resnet18, {n} JPEGs (160-320 px) in 10 class folders, Resize({RESIZE}) + "
            f"CenterCrop({CROP}), batch {batch}, {workers} loader workers | ImageFolder + DataLoader loop "
            f"{n / min(times['bare']):,.1f} img/s (best round) | embed_files {n / min(times['ours']):,.1f} img/s "
            f"(best round) | **{ratio * 100:.0f} %** of bare (median of {rounds}; bar >= {BAR * 100:.0f} %: "
            f"{verdict}) | per round {' / '.join(f'{x:.2f}' for x in ratios)}; max rel. diff {rel:.1e} |")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    ap.add_argument("--n", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--no-write", action="store_true")
    args, _ = ap.parse_known_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    cfg.update({k: v for k, v in (("n", args.n), ("rounds", args.rounds)) if v})
    row = run(**cfg)
    table = "| case | baseline | repscope | ratio | notes |\n|---|---|---|---|---|\n" + row
    print(table)
    if not (args.quick or args.no_write):
        write_section("folder-embed", f"## Folder embedding throughput (streamed)\n\nMachine: {machine()}, torch "
                      f"{torch.__version__}. {cfg['rounds']} rounds, alternating, one process, "
                      f"{time.strftime('%Y-%m-%d')}.\n\n{table}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
