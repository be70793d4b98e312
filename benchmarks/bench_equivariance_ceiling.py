"""How much of what the pixel encoder keeps does the equivariance suite's B head recover?

The identity encoder (8x8 area-downsampled pixels, as tests/unit/test_equivariance.py's `pixels`) keeps every
transformation parameter that the image content reveals. An oracle that knows the encoder is the identity
recovers the parameter of each pair (x, Tx) by searching for the T_θ with T_θ(x) closest to Tx in the
encoder's space: a grid of 0.25° for rotation, Nelder-Mead from three starts for the four colour factors.
Its held-out R² is the information ceiling on `shapes`. The suite's B heads (ridge, SIE's two-hidden-layer MLP)
see the same images and parameter distributions; the gap between them is what the head, not the encoder,
loses. Writes the "equivariance-ceiling" section of benchmarks/RESULTS.md.

Usage: python -m benchmarks.bench_equivariance_ceiling [--images N] [--oracle-images M]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from benchmarks.common import machine, write_section
from worker.datasets.builtin import load_builtin
from worker.suites import equivariance as eq

SEED = 0
PIXELS = 8  # side of the downsampled pixel encoder
ROTATION_GRID_STEP = 0.25  # degrees
COLOUR_STARTS = ((1.0, 1.0, 1.0, 0.0), (0.8, 1.2, 0.8, 0.05), (1.2, 0.8, 1.2, -0.05))


def pixels(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(PIXELS, PIXELS), mode="area").flatten(1)


def oracle_rotation(x: torch.Tensor, angles: np.ndarray) -> np.ndarray:
    """Per image, the grid angle whose view is nearest (squared error in encoder space) to the target view."""
    target = pixels(eq.view("rotation", x, torch.tensor(angles[:, None], dtype=torch.float32)))
    grid = np.arange(-eq.ROTATION_DEG[-1], eq.ROTATION_DEG[-1] + 1e-9, ROTATION_GRID_STEP)
    gt = torch.tensor(grid[:, None], dtype=torch.float32)
    best = np.empty(len(x))
    for i in range(len(x)):
        cand = pixels(eq.view("rotation", x[i : i + 1].expand(len(grid), -1, -1, -1), gt))
        best[i] = grid[int(((cand - target[i : i + 1]) ** 2).sum(dim=1).argmin())]
    return best


def oracle_colour(x: torch.Tensor, params: np.ndarray) -> np.ndarray:
    """Per image, the (brightness, contrast, saturation, hue) minimising the encoder-space error (Nelder-Mead)."""
    target = pixels(eq.view("colour", x, torch.tensor(params, dtype=torch.float32)))
    out = np.empty_like(params)
    for i in range(len(x)):

        def err(q: np.ndarray, i: int = i) -> float:
            v = pixels(eq.view("colour", x[i : i + 1], torch.tensor(q[None], dtype=torch.float32)))
            return float(((v - target[i : i + 1]) ** 2).sum())

        fits = [minimize(err, np.array(s), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-10,
                                                                            "maxiter": 800}) for s in COLOUR_STARTS]
        out[i] = min(fits, key=lambda r: r.fun).x
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600, help="shapes images for the suite (100 per class)")
    ap.add_argument("--oracle-images", type=int, default=150, help="images the oracle searches on")
    args = ap.parse_args(argv)
    torch.manual_seed(SEED)
    imgs = load_builtin("shapes", n_per_class=args.images // 6).images
    rng = np.random.default_rng(SEED)
    x = eq.to_square_float(torch.as_tensor(imgs[rng.choice(len(imgs), args.oracle_images, replace=False)]))
    t0 = time.perf_counter()
    angles = rng.uniform(-eq.ROTATION_DEG[-1], eq.ROTATION_DEG[-1], len(x))
    est = oracle_rotation(x, angles)
    rot_oracle = eq._r2_outputs(eq.targets("rotation", angles[:, None]), eq.targets("rotation", est[:, None]))
    cparams = eq.sample_params("colour", len(x), rng)
    col_oracle = eq._r2_outputs(cparams, oracle_colour(x, cparams))
    t_oracle = time.perf_counter() - t0
    suite = {}
    more = load_builtin("shapes", n_per_class=4 * args.images // 6).images
    for label, images, draws in ((f"{len(imgs)} images, {eq.B_DRAWS} draws", imgs, eq.B_DRAWS),
                                 (f"{len(imgs)} images, {4 * eq.B_DRAWS} draws", imgs, 4 * eq.B_DRAWS),
                                 (f"{len(more)} images, {eq.B_DRAWS} draws", more, eq.B_DRAWS)):
        t1 = time.perf_counter()
        res = eq.run_equivariance(pixels, images, families=["rotation", "colour"], n_images=len(images),
                                  n_draws=draws, device="cpu", seed=SEED)
        suite[label] = res.figures["r2"]["per_output"]
        print(f"suite, {label}: {time.perf_counter() - t1:.0f} s", flush=True)
    first = next(iter(suite))
    rows = []
    for fam, oracle in (("rotation", rot_oracle), ("colour", col_oracle)):
        targets = suite[first][fam]["targets"]
        rows.append(f"| {fam} | " + " / ".join(targets) + f" | {np.mean(oracle):.3f} ("
                    + ", ".join(f"{v:.3f}" for v in oracle) + ") | "
                    + " | ".join(f"{np.mean(suite[d][fam][h]):.3f} (" + ", ".join(f"{v:.2f}" for v in suite[d][fam][h])
                                 + ")" for d in suite for h in ("linear", "mlp")) + " |")
    summary = "Share of the oracle's R² that the suite's MLP head reaches (" + " / ".join(suite) + "): " + "; ".join(
        f"{fam} " + " / ".join(f"{np.mean(suite[lab][fam]['mlp']) / np.mean(o):.0%}" for lab in suite)
        for fam, o in (("rotation", rot_oracle), ("colour", col_oracle))) + (
        ". The MLP head is SIE's deep end (two hidden layers of 1024). Before it, a one-hidden-layer 256 head "
        "reached 0.524 / 0.664 (rotation) and 0.512 / 0.562 (colour) at 600 images with 4 / 16 draws. Other heads "
        "tried on the same pairs in exploratory runs (600 images, 16 draws; not kept): 2 × 512 with one-cycle LR 0.84 / 0.62; "
        "a factored multiplicative (gated) head 0.89 / 0.63; 3 × 512 0.63 on colour: contrast and saturation "
        "stay near 0.4 with every head, so the head, not the encoder, caps them.")
    cols = " | ".join(f"suite linear, {lab} | suite MLP, {lab}" for lab in suite)
    header = (f"| family | outputs | oracle R² (per output) | {cols} |\n|---|---|---|" + "---|" * (2 * len(suite)))
    text = (f"## Equivariance suite: the information ceiling of the pixel encoder\n\nMachine: {machine()}. "
            f"One process, {time.strftime('%Y-%m-%d')}. Encoder: {PIXELS}x{PIXELS} area-downsampled pixels "
            f"(identity up to resolution). Suite: {len(imgs)} shapes images, 80/20 image split, defaults otherwise; "
            f"oracle on {len(x)} images ({t_oracle:.0f} s): the parameter whose view is nearest to the target "
            f"view in encoder space.\n\n{header}\n" + "\n".join(rows) + "\n\n" + summary)
    print(text)
    write_section("equivariance-ceiling", text)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
