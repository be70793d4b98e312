"""The equivariance suite's run over one encoder, and its entry point for the registry (repscope.suites).

Per family: the base view f(x) (plain, or disc-masked for rotation; shared between families with the same
mask), one encoder pass per fixed g for A and C, and n_draws passes of random parameters for B (rot90 also
gets the single-view head).

Cost: one encoder pass over n images per fixed g (54), per base view (plain / disc-masked: 2) and per B draw
(13 × B_DRAWS): 108 passes with every family. Features of one family at a time stay on the device
(≤ 13 × n × D floats); B's ridge works on a float64 (B_DRAWS·n) × 2D matrix. The MLP heads dominate on a CPU:
14 heads (13 families + single view) × MLP_EPOCHS epochs over ≈ 0.64·B_DRAWS·n pairs through a 1024 × 1024
layer. The ridge numbers agree across devices to rounding; the MLP heads (float32, different kernels) do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from worker.suites.base import EncodeFn, ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import check_finite
from worker.suites.common.encode import encode_batched
from worker.suites.common.images import to_square_float
from worker.suites.equivariance import report
from worker.suites.equivariance.families import FAMILIES, element_params, family_rng, sample_params, targets
from worker.suites.equivariance.heads import MLP_EPOCHS
from worker.suites.equivariance.inputs import DEFAULT_N_IMAGES, Setup, prepare
from worker.suites.equivariance.invariance import invariance_curve, shuffle_permutation
from worker.suites.equivariance.prediction import B_DRAWS, predict_params
from worker.suites.equivariance.structure import structure_scores
from worker.suites.equivariance.transforms import view

ROT90_CLASSES = 4  # the single-view head's 4-way rot90 classes


class ViewEncoder:
    """Batched features of transformed views of the (device-resident, uint8) images; counts encoder passes."""

    def __init__(self, encode: EncodeFn, setup: Setup):
        self.encode, self.setup = encode, setup
        self.passes = 0

    def features(self, family: str, params: np.ndarray | None) -> torch.Tensor:
        """f(view) float32 [n, D] for every image: params [n, k] per image, or None for the untransformed
        (masked) view."""
        s = self.setup
        p = None if params is None else torch.as_tensor(params, dtype=torch.float64, device=s.device)

        def prepare_batch(x_u8: torch.Tensor, a: int, b: int) -> torch.Tensor:
            return view(family, to_square_float(x_u8), None if p is None else p[a:b], s.pixel_scale).contiguous()

        z = encode_batched(self.encode, s.images, s.device, s.batch_size, dtype=torch.float32, check=True,
                           prepare=prepare_batch)  # fmt: skip
        self.passes += 1
        check_finite(z, f"the encoder returned NaN or infinite features ({family})")
        return z


def _run_family(name: str, enc: ViewEncoder, z0: torch.Tensor, perm: torch.Tensor,
                progress: Callable[[float, str], None]) -> dict[str, Any]:  # fmt: skip
    """A and C over the family's fixed g (when it has them), then B; progress(fraction of the family, msg)."""
    s, fam = enc.setup, FAMILIES[name]
    res: dict[str, Any] = {"kind": fam.kind}
    if fam.has_elements:
        zs = [enc.features(name, element_params(fam, s.n, j)) for j in range(len(fam.elements))]
        res["invariance"] = invariance_curve(fam, z0, zs, perm)
        progress(0.4, f"{name}: equivariance maps")
        res["structure"] = structure_scores(fam, z0, zs, s.split)
        del zs
    progress(0.6, f"{name}: parameter prediction")
    n, d = s.n, s.n_draws
    params = sample_params(name, n * d, family_rng(s.seed, name))  # row d·n + i: draw d of image i
    zt = torch.cat([enc.features(name, params[k * n : (k + 1) * n]) for k in range(d)])
    y = targets(name, params)
    pair_split = s.split.repeat(n, d)
    head_kw = {"seed": s.seed, "mlp": s.mlp, "mlp_epochs": s.mlp_epochs}
    x_pairs = torch.cat([z0.repeat(d, 1), zt], dim=1)
    res["prediction"] = predict_params(x_pairs, y, pair_split, discrete=fam.kind == "discrete",
                                       n_classes=len(fam.targets), **head_kw)  # fmt: skip
    del x_pairs
    if name == "rot90":
        res["single_view"] = predict_params(zt, y, pair_split, discrete=True, n_classes=ROT90_CLASSES, **head_kw)
    return res


def run_equivariance(
    encode: EncodeFn,
    images: np.ndarray | torch.Tensor,
    *,
    families: Sequence[str] | None = None,
    n_images: int = DEFAULT_N_IMAGES,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    n_draws: int = B_DRAWS,
    mlp: bool = True,
    mlp_epochs: int = MLP_EPOCHS,
    progress: ProgressFn = no_progress,
) -> SuiteResult:
    """Every equivariance metric of METRICS.md (A, B, C: invariance.py, prediction.py, structure.py) for one
    encoder on uint8 N×H×W×C images.

    encode     -- float N×3×s×s batch in [0, 1] on `device` → features [N, D] (the caller adds resizing and
                  normalisation); called under torch.no_grad, batch_size images at a time.
    families   -- subset of FAMILY_NAMES (default: all).
    n_images   -- images used: sorted default_rng(seed).choice(N, n_images, replace=False) when N is larger.
    n_draws    -- random parameter draws per image in B (pairs = n_draws × images; every draw of an image
                  stays on the image's side of the split).
    mlp        -- also train the MLP heads (B); the linear heads always run. mlp_epochs: their epochs.
    """
    setup = prepare(images, families=families, n_images=n_images, seed=seed, device=device, batch_size=batch_size,
                    n_draws=n_draws, mlp=mlp, mlp_epochs=mlp_epochs)  # fmt: skip
    enc = ViewEncoder(encode, setup)
    base: dict[str, torch.Tensor] = {}  # f(x) per mask
    perm: torch.Tensor | None = None
    per_family: dict[str, dict[str, Any]] = {}
    total = len(setup.families)
    for i, name in enumerate(setup.families):
        progress(i / total, f"{name}: encoding views")
        mask = FAMILIES[name].mask
        if mask not in base:
            base[mask] = enc.features(name, None)
        if perm is None:
            perm = shuffle_permutation(setup.n, base[mask].shape[1], seed, setup.device)
        per_family[name] = _run_family(name, enc, base[mask], perm,
                                       lambda f, msg, i=i: progress(i / total + f / total, msg))  # fmt: skip
    metrics = report.metrics(per_family)
    dim = int(base["none" if "none" in base else "disc"].shape[1])
    variant = report.variant(setup, per_family, enc.passes, dim)
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=report.figures(per_family, metrics), variant=variant,
                       warnings=setup.warnings())  # fmt: skip


def on_encoder(encode: EncodeFn, images: np.ndarray, labels: np.ndarray | None, device: str,  # noqa: ARG001
               progress: ProgressFn) -> SuiteResult:
    """Invariance and equivariance of the encoder over the dataset's images (labels are not used)."""
    return run_equivariance(encode, images, device=device, progress=progress)
