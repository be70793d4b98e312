"""DECREE trigger inversion (Feng et al., "Detecting Backdoors in Pre-trained Encoders", CVPR 2023): the smallest
mask and pattern whose stamp collapses the encoder. A backdoored encoder collapses under a small stamp (its
trigger); a clean one needs most of the image replaced.

Follows the authors' code (GiantSeaweed/DECREE, main.py, utils.py, run_decree.py; read at commit 9c13b88):
  mask      one H×W parameter a, m = tanh(a)/(2 − ε) + ½ (ε = 1e-7), repeated over the channels; pattern
            p = tanh(b)/(2 − ε) + ½ (C×H×W); both initialised uniform random (a = atanh((m₀ − ½)(2 − ε)), so m
            starts at m₀ exactly) and kept in float64, as the code's parameters are;
  stamp     x′ = (1 − m)·x + m·p on images in [0, 1] (the code works in [0, 255] and divides by 255; the
            encoder's own normalisation is inside `encode`);
  loss      −cos(x′) + λ·‖m‖₁ with ‖m‖₁ the sum of the mask over 3 channels (H×W×3, the code's
            `torch.sum(torch.abs(train_mask_tanh))` on the repeated mask; DECREE_MASK_CHANNELS);
  λ         λ₀ = 1e-3; after more than 5 consecutive successes ×5 (while λ < 1e5), after more than 5
            consecutive failures ÷5 (while λ ≥ λ_min); back to λ₀ after more than 2·5 successes in a row
            while λ < λ_min;
  optimiser Adam, lr 0.5 (run_decree.py), betas (0.5, 0.9); one pass over the shuffled scan images (batches of
            128, the last one partial) is an epoch; lr 0.5 before epoch 30, 0.1 before epoch 50, then 0.05
            (CIFAR-10/STL-10 settings, λ_min = 1e-5, stop patience 2·5 steps); images with sides above 96 px
            take the code's ImageNet/CLIP settings (epochs 200 / 500, λ_min = 1e-7, stop patience 7·5);
            at most 1000 epochs;
  success   a step whose batch has mean pairwise cosine > 0.99 (mean over ordered pairs i ≠ j, the code's
            compute_self_cos_sim); the mask and pattern of a successful step whose ‖m‖₁ is below the best so
            far are kept (values before that step's update, as the code stores them);
  stop      at the end of an epoch whose mean batch cosine is > 0.99 while the best mask has not shrunk for
            more than the stop patience (counted in steps);
  score     PL1 = ‖m‖₁ / (3·H·W) = mean of the H×W mask, in [0, 1] (the paper's "PL1-norm": the L1 norm of the
            mask over its size); 1.0 when no mask succeeded.

Deviations, and why:
  similarity  by default the features are centred with the clean scan images' mean feature μ before the
            cosine, cos(f(x′_i) − μ, f(x′_j) − μ) (similarity="centred"); the code uses raw features
            (similarity="raw" reproduces it). ReLU features share a large positive offset: raw cosines of
            clean images are 0.4–0.85 on small encoders, the 0.99 target is then reached by shifting that
            offset, not by collapsing the images onto one point, and the recovered mask need not touch the
            trigger (issue #23). Centred, clean images score ≈ 0 and 0.99 means the stamped images really
            coincide relative to the clean spread; a backdoor's target embedding still differs from μ.
  stop      the early stop may not fire before the learning-rate schedule has ended (epoch 50; 500 for the
            ImageNet/CLIP settings). The code lets it fire from the first epoch: a search whose first step
            already succeeds stopped 11 steps later, before λ had grown enough to shrink the mask.
  budget    a wall-clock limit (`seconds`) and an optional step limit (`steps`) also end the search; the result
            says which rule stopped it and whether the schedule had ended (`schedule_done`).
  batches   a final batch of a single image (no pair for the cosine) is skipped.

With a known trigger region (`trigger_region`: a boolean H×W mask or a box (r0, r1, c0, c1), half-open) the
result also gives the share of the mask's mass inside it, to compare with the region's share of the image (what
a uniform mask puts there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.suites.base import EncodeFn, ProgressFn, no_progress
from worker.suites.common.arrays import l2_normalize
from worker.suites.common.encode import encode_batched
from worker.suites.common.images import to_float

from .collapse import ENCODE_BATCH, mean_pairwise_cosine
from .decree_schedule import (
    DECREE_COS_THRESHOLD,
    DECREE_LAMBDA_FACTOR,
    DECREE_LAMBDA_INIT,
    DECREE_LAMBDA_MAX,
    DECREE_LATE_LRS,
    DECREE_LR,
    DECREE_PATIENCE,
    DECREE_PROFILE_SIDE,
    PROFILE_CIFAR,
    PROFILE_IMAGENET,
    DecreeProfile,
    LambdaRule,
    SearchState,
    decree_lr,
    mask_share,
    profile_for,
    region_mask,
    should_stop,
)

__all__ = [
    "DECREE_COS_THRESHOLD", "DECREE_LAMBDA_FACTOR", "DECREE_LAMBDA_INIT", "DECREE_LAMBDA_MAX", "DECREE_LATE_LRS",
    "DECREE_LR", "DECREE_PATIENCE", "DECREE_PROFILE_SIDE", "PROFILE_CIFAR", "PROFILE_IMAGENET", "DecreeProfile",
    "DecreeResult", "LambdaRule", "SearchState", "batch_cosine", "decree", "decree_loss", "decree_lr", "mask_l1",
    "mask_share", "profile_for", "region_mask", "should_stop",
]

DECREE_BETAS = (0.5, 0.9)
DECREE_BATCH = 128  # run_decree.py batch_size
DECREE_EPOCHS = 1000  # main.py epochs
DECREE_MASK_CHANNELS = 3  # the code's mask is H×W×3: λ multiplies the mask summed over 3 channels
DECREE_SECONDS = 300.0  # wall-clock limit of one search
# Feng et al. flag an encoder when PL1 < 0.1; the default threshold here. Calibration on clean encoders:
DECREE_PL1_THRESHOLD = 0.1
DECREE_CALIBRATION = (
    "Feng et al. flag PL1 < 0.1. Clean encoders measured here with the centred cosine (benchmarks/RESULTS.md, "
    "'backdoor'): tiny SimCLR ConvNets at 32 px, 0.138 ± 0.006 on natural-image crops (512 crops, 3 DECREE "
    "seeds; 0.155 on 256 crops) and 0.306 ± 0.004 on `shapes` (2 training seeds). Backdoored copies score "
    "0.003–0.04 when DECREE catches them and near the clean level when it misses (patch triggers: "
    "0.193 ± 0.099 on `shapes`, 0.125 ± 0.018 for the opaque 5×5 patch on natural crops). Recalibrate for "
    "another architecture, input size or dataset by scanning known-clean encoders of that kind and setting "
    "decree_threshold below their PL1"
)
DECREE_TRACE_POINTS = 200  # optimisation trace points kept for the figure
ATANH_EPS = 1e-7  # utils.epsilon(): keeps atanh of the initial mask and pattern finite
PROGRESS_EVERY = 10  # steps between progress reports
SIMILARITIES = ("centred", "raw")

NO_GRADIENT = ("encode() returned features without gradients: DECREE needs a differentiable encoder "
               "(no torch.no_grad inside encode)")  # fmt: skip


@dataclass
class DecreeResult:
    """Outcome of ``decree``. pl1 is 1.0 when no mask succeeded within the budget (the full mask always
    succeeds: every stamped image is then the pattern itself)."""

    pl1: float
    success: bool
    mask: np.ndarray  # H×W float in [0, 1], the smallest successful mask (or the last one)
    pattern: np.ndarray  # H×W×C float in [0, 1]
    cos_batch: float  # mean pairwise cosine of the batch on which the best mask succeeded
    cos_all: float  # the best mask and pattern applied to every scan image (same similarity)
    steps: int
    seconds: float
    first_success_step: int | None
    stopped: str  # "early stop", "epochs", "steps" or "seconds"
    trace: dict[str, list[float]] = field(default_factory=dict)
    epochs: int = 0  # epochs begun
    similarity: str = "centred"
    profile: str = PROFILE_CIFAR.name
    schedule_done: bool = False  # the search ran past the last learning-rate milestone
    mask_in_region: float | None = None  # share of the mask's mass inside the known trigger region
    region_share: float | None = None  # the region's share of the image (what a uniform mask puts there)


def mask_l1(m: torch.Tensor) -> torch.Tensor:
    """‖m‖₁ of the mask repeated over DECREE_MASK_CHANNELS channels (main.py: the H×W×3 mask's sum)."""
    return DECREE_MASK_CHANNELS * m.abs().sum()


def decree_loss(cos: torch.Tensor, m: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DECREE's objective −cos + λ·‖m‖₁ (``mask_l1``); returns it and ‖m‖₁."""
    l1 = mask_l1(m)
    return -cos + lam * l1, l1


def _mask_pattern(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = tanh(a)/(2 − ε) + ½ (1×1×H×W), p = tanh(b)/(2 − ε) + ½ (1×C×H×W), clipped to [0, 1] (main.py)."""
    return ((torch.tanh(a) / (2 - ATANH_EPS) + 0.5).clamp(0, 1),
            (torch.tanh(b) / (2 - ATANH_EPS) + 0.5).clamp(0, 1))  # fmt: skip


def _initial_parameters(h: int, w: int, c: int, g: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Float64 a, b with uniform random m₀, p₀ drawn from `g`: a = atanh((m₀ − ½)(2 − ε)) (main.py, mask_init
    'rand')."""
    m0 = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    p0 = torch.rand(1, c, h, w, generator=g, dtype=torch.float64)
    a = torch.atanh((m0 - 0.5) * (2 - ATANH_EPS)).to(device).requires_grad_(True)
    b = torch.atanh((p0 - 0.5) * (2 - ATANH_EPS)).to(device).requires_grad_(True)
    return a, b


def batch_cosine(z: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
    """Mean over ordered pairs i ≠ j of cos(z_i − μ, z_j − μ) (μ = 0 when None: the code's raw cosine),
    differentiable: with ẑ the normalised rows, (‖Σ ẑ_i‖² − Σ ‖ẑ_i‖²) / (n(n − 1))."""
    n = z.shape[0]
    z = z.reshape(n, -1).float()
    if mu is not None:
        z = z - mu
    zh = l2_normalize(z)
    s = zh.sum(dim=0)
    return (s @ s - (zh * zh).sum()) / (n * (n - 1))


def decree(
    encode: EncodeFn,
    images: np.ndarray,
    *,
    epochs: int = DECREE_EPOCHS,
    steps: int | None = None,
    seconds: float = DECREE_SECONDS,
    threshold: float = DECREE_COS_THRESHOLD,
    batch: int = DECREE_BATCH,
    lr: float = DECREE_LR,
    similarity: str = "centred",
    center: torch.Tensor | None = None,
    trigger_region: np.ndarray | Sequence[int] | None = None,
    early_stop: bool = True,
    seed: int = 0,
    device: torch.device,
    progress: ProgressFn = no_progress,
) -> DecreeResult:
    """DECREE trigger inversion (module docstring) over uint8 N×H×W×C `images`.

    Each step stamps x′ = (1 − m)·x + m·p on a batch of the shuffled images and takes one Adam step on
        −cos(x′) + λ·‖m‖₁,   cos(x′) = mean over pairs i ≠ j of cos(f(x′_i) − μ, f(x′_j) − μ),
    μ = `center` (default: the mean feature of `images`) for similarity="centred", μ = 0 for "raw" (the code's).
    Stops by the code's rule once the lr schedule has ended, or after `epochs` / `steps` / `seconds`.

    Score: PL1 = ‖m‖₁ / (3·H·W) of the smallest successful mask, in [0, 1] — lower = more suspicious.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    n, h, w, c = images.shape
    region = None if trigger_region is None else region_mask(trigger_region, h, w)
    profile = profile_for(h, w)
    g = torch.Generator().manual_seed(seed)
    a, b = _initial_parameters(h, w, c, g, device)
    x_u8 = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8 stays compact on the device
    mu = None
    if similarity == "centred":
        mu = encode_batched(encode, x_u8, device, ENCODE_BATCH).mean(dim=0) if center is None else center
        mu = mu.to(device=device, dtype=torch.float32).reshape(1, -1)
    t0 = time.perf_counter()
    search, trace, stopped, n_epochs = _optimise(
        encode, x_u8, a, b, g, mu, profile, epochs=epochs, steps=steps, seconds=seconds, threshold=threshold,
        batch=min(batch, n), lr=lr, early_stop=early_stop, progress=progress)  # fmt: skip
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        if search.best is None:
            m, p = _mask_pattern(a, b)
            pl1_best, cos_batch = 1.0, math.nan
        else:
            l1_best, m, p, cos_batch = search.best
            pl1_best = l1_best / (DECREE_MASK_CHANNELS * h * w)
    stamped = encode_batched(encode, x_u8, device, ENCODE_BATCH,
                             prepare=lambda x, _a, _b: ((1 - m) * to_float(x) + m * p).float())  # fmt: skip
    mask = m[0, 0].cpu().numpy().astype(np.float64)
    inside, share = mask_share(mask, region) if region is not None else (None, None)
    n_steps = len(trace["step"])
    return DecreeResult(
        pl1=float(pl1_best),
        success=search.best is not None,
        mask=mask,
        pattern=p[0].permute(1, 2, 0).cpu().numpy().astype(np.float64),
        cos_batch=float(cos_batch),
        cos_all=float(mean_pairwise_cosine(stamped, None if mu is None else mu[0])),
        steps=n_steps,
        seconds=elapsed,
        first_success_step=search.first_success,
        stopped=stopped,
        trace=_thin(trace, n_steps),
        epochs=n_epochs,
        similarity=similarity,
        profile=profile.name,
        schedule_done=n_epochs >= profile.milestones[-1],
        mask_in_region=inside,
        region_share=share,
    )


def _epoch_batches(n: int, batch: int, g: torch.Generator) -> list[torch.Tensor]:
    """One epoch: a seeded permutation of the n images cut into batches (the last one partial, as a shuffled
    DataLoader without drop_last); a final single image is dropped (no pair for the cosine)."""
    perm = torch.randperm(n, generator=g)
    return [perm[i : i + batch] for i in range(0, n, batch) if min(n, i + batch) - i >= 2]


def _optimise(encode: EncodeFn, x_u8: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g: torch.Generator,
              mu: torch.Tensor | None, profile: DecreeProfile, *, epochs: int, steps: int | None, seconds: float,
              threshold: float, batch: int, lr: float, early_stop: bool,
              progress: ProgressFn) -> tuple[SearchState, dict[str, list[float]], str, int]:  # fmt: skip
    """DECREE's Adam loop on a, b (in place) until the stop rule, `epochs`, `steps` or `seconds`; returns the
    search state, the per-step trace, why it stopped and the number of epochs begun."""
    n, h, w = x_u8.shape[:3]
    l1_full = DECREE_MASK_CHANNELS * h * w  # ‖m‖₁ of the full mask
    per_epoch = len(_epoch_batches(n, batch, torch.Generator()))
    budget = epochs * per_epoch if steps is None else min(steps, epochs * per_epoch)
    opt = torch.optim.Adam([a, b], lr=decree_lr(0, profile, lr), betas=DECREE_BETAS)
    lam, search = LambdaRule(profile.lambda_min), SearchState()
    trace: dict[str, list[float]] = {"step": [], "cos": [], "pl1": [], "lambda": [], "success": []}
    t0, step = time.perf_counter(), 0
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = decree_lr(epoch, profile, lr)
        epoch_cos = []
        for idx in _epoch_batches(n, batch, g):
            if steps is not None and step >= steps:
                return search, trace, "steps", epoch + (len(epoch_cos) > 0)
            if time.perf_counter() - t0 >= seconds:
                return search, trace, "seconds", epoch + (len(epoch_cos) > 0)
            m, p = _mask_pattern(a, b)
            x = ((1 - m) * to_float(x_u8[idx.to(x_u8.device)]) + m * p).float()
            z = encode(x)
            if not z.requires_grad:
                raise RuntimeError(NO_GRADIENT)
            cos = batch_cosine(z, mu)
            loss, l1 = decree_loss(cos, m, lam.value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            cos_v, l1_v = float(cos.detach()), float(l1.detach())
            success = cos_v > threshold
            search.record(step, success, l1_v, cos_v, m, p)
            lam.update(success)
            epoch_cos.append(cos_v)
            pl1_v = l1_v / l1_full
            for key, val in zip(trace, (step, cos_v, pl1_v, lam.value, float(success)), strict=True):
                trace[key].append(float(val))
            step += 1
            if step % PROGRESS_EVERY == 0:
                frac = max(step / max(budget, 1), (time.perf_counter() - t0) / max(seconds, 1e-9))
                best = "" if search.best is None else f", best {search.best[0] / l1_full:.3f}"
                progress(min(frac, 1.0), f"DECREE epoch {epoch + 1}, step {step}: cos {cos_v:.3f}, "
                         f"PL1 {pl1_v:.3f}{best}")  # fmt: skip
        if early_stop and should_stop(epoch, float(np.mean(epoch_cos)), search.stall, profile, threshold):
            return search, trace, "early stop", epoch + 1
    return search, trace, "epochs", epochs


def _thin(trace: dict[str, list[float]], steps: int) -> dict[str, list[float]]:
    """At most DECREE_TRACE_POINTS evenly spaced steps of the trace (first and last kept)."""
    if not steps:
        return {k: [] for k in trace}
    keep = np.unique(np.linspace(0, steps - 1, min(steps, DECREE_TRACE_POINTS)).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in trace.items()}
