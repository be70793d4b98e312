"""DECREE trigger inversion (Feng et al., "Detecting Backdoors in Pre-trained Encoders", CVPR 2023; their code
GiantSeaweed/DECREE main.py, CIFAR-10 settings): the smallest mask and pattern whose stamp collapses the
encoder. A backdoored encoder collapses under a small stamp (its trigger); a clean one needs most of the image
replaced.

Adam with betas (0.5, 0.9) on tanh parameters, uniform random initial mask and pattern; success when the
stamped batch's mean pairwise cosine exceeds 0.99; loss −cos + λ‖m‖₁ with λ = 1e-3 from the first step (‖m‖₁
summed over H×W pixels, as the code), multiplied / divided by 5 after 5 consecutive successes / failures
(METRICS.md; the code counts "more than 5"), not below λ_min = 1e-5 (reset to 1e-3 after 2·5 further successes
below it). Learning rate 0.5, then 0.1 from step 30 and 0.05 from step 50 (the code's CIFAR schedule is per
epoch over a 50-image shadow set: one step each). Early stop once a step succeeds and the best mask has not
shrunk for more than 2·5 steps (the code's rule).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.suites.base import EncodeFn, ProgressFn, no_progress
from worker.suites.common.arrays import l2_normalize
from worker.suites.common.encode import encode_batched
from worker.suites.common.images import to_float

from .collapse import ENCODE_BATCH, mean_pairwise_cosine

DECREE_COS_THRESHOLD = 0.99
DECREE_LR_SCHEDULE = ((0, 0.5), (30, 0.1), (50, 0.05))  # (first step, learning rate)
DECREE_BETAS = (0.5, 0.9)
DECREE_BATCH = 128  # the code's default; on CIFAR its 50-image shadow set makes every batch 50 images
DECREE_LAMBDA_INIT = 1e-3
DECREE_LAMBDA_MIN = 1e-5
DECREE_LAMBDA_MAX = 1e5
DECREE_PATIENCE = 5
DECREE_LAMBDA_FACTOR = 5.0
DECREE_EARLY_STOP = 2 * DECREE_PATIENCE
DECREE_STEPS = 1000
DECREE_SECONDS = 120.0
# Feng et al. flag an encoder when PL1 < 0.1; the default threshold here. Calibrate on clean encoders of the
# same architecture, input size and data (benchmarks/RESULTS.md, "backdoor", lists clean values).
DECREE_PL1_THRESHOLD = 0.1
DECREE_TRACE_POINTS = 200  # optimisation trace points kept for the figure
ATANH_EPS = 1e-7  # the code's epsilon: keeps atanh of the initial mask and pattern finite
PROGRESS_EVERY = 10  # steps between progress reports

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
    cos_all: float  # the best mask and pattern applied to every scan image
    steps: int
    seconds: float
    first_success_step: int | None
    stopped: str  # "early stop", "steps" or "seconds"
    trace: dict[str, list[float]] = field(default_factory=dict)


def decree_lr(step: int) -> float:
    """DECREE's learning-rate schedule (DECREE_LR_SCHEDULE)."""
    lr = DECREE_LR_SCHEDULE[0][1]
    for first, value in DECREE_LR_SCHEDULE:
        if step >= first:
            lr = value
    return lr


@dataclass
class _Lambda:
    """The weight λ of ‖m‖₁ and its counters: ×5 after 5 successes in a row, ÷5 after 5 failures, back to λ₀
    after more than 2·5 successes while below λ_min."""

    value: float = DECREE_LAMBDA_INIT
    ups: int = 0
    downs: int = 0
    resets: int = 0

    def update(self, success: bool) -> None:
        if self.value < DECREE_LAMBDA_MIN and success:
            self.resets += 1
            if self.resets > 2 * DECREE_PATIENCE:
                self.value, self.ups, self.downs, self.resets = DECREE_LAMBDA_INIT, 0, 0, 0
        else:
            self.resets = 0
        self.ups, self.downs = (self.ups + 1, 0) if success else (0, self.downs + 1)
        if self.ups >= DECREE_PATIENCE:
            self.value = self.value * DECREE_LAMBDA_FACTOR if self.value < DECREE_LAMBDA_MAX else self.value
            self.ups = 0
        elif self.downs >= DECREE_PATIENCE:
            self.value = self.value / DECREE_LAMBDA_FACTOR if self.value >= DECREE_LAMBDA_MIN else self.value
            self.downs = 0


@dataclass
class _Search:
    """The smallest successful (PL1, mask, pattern, batch cosine) so far, the first successful step, and the
    code's early-stop counter: steps without a smaller successful mask."""

    best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
    first_success: int | None = None
    es_best: float = math.inf
    es_count: int = 0

    def record(self, step: int, success: bool, pl1: float, cos: float, m: torch.Tensor, p: torch.Tensor) -> None:
        if success and (self.best is None or pl1 < self.best[0]):
            self.best = (pl1, m.detach().clone(), p.detach().clone(), cos)
        if success and self.first_success is None:
            self.first_success = step
        if self.best is not None:
            self.es_count = self.es_count + 1 if self.best[0] >= self.es_best else 0
            self.es_best = min(self.es_best, self.best[0])


def _mask_pattern(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = (tanh a + 1)/2 (1×1×H×W), p = (tanh b + 1)/2 (1×C×H×W)."""
    return (torch.tanh(a) + 1) / 2, (torch.tanh(b) + 1) / 2


def _initial_parameters(h: int, w: int, c: int, g: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """a, b with uniform random m₀, p₀ (drawn in float64 from `g`): a = atanh((m₀ − 0.5)(2 − ε))."""
    m0 = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    p0 = torch.rand(1, c, h, w, generator=g, dtype=torch.float64)
    a = torch.atanh((m0 - 0.5) * (2 - ATANH_EPS)).float().to(device).requires_grad_(True)
    b = torch.atanh((p0 - 0.5) * (2 - ATANH_EPS)).float().to(device).requires_grad_(True)
    return a, b


def _batch_cosine(encode: EncodeFn, x: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
    """Mean pairwise cosine of the stamped batch's features (centred with mu when given), differentiable."""
    z = encode(x)
    if not z.requires_grad:
        raise RuntimeError(NO_GRADIENT)
    n = x.shape[0]
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
    steps: int = DECREE_STEPS,
    seconds: float = DECREE_SECONDS,
    threshold: float = DECREE_COS_THRESHOLD,
    batch: int = DECREE_BATCH,
    center: torch.Tensor | None = None,
    early_stop: bool = True,
    seed: int = 0,
    device: torch.device,
    progress: ProgressFn = no_progress,
) -> DecreeResult:
    """DECREE trigger inversion (module docstring).

    Parameters a (H×W) and b (C×H×W), initialised from uniform random m₀, p₀ (a = atanh(2m₀ − 1));
    mask m = (tanh a + 1)/2, pattern p = (tanh b + 1)/2. Each step draws a batch x of the clean images
    (seeded), stamps x′ = (1 − m)·x + m·p and, with
        cos(x′) = mean over pairs i ≠ j of cos(f(x′_i) − c, f(x′_j) − c)   (c = `center`, or 0 = raw),
    takes one Adam step on  −cos(x′) + λ‖m‖₁  (schedule and λ rule: module constants DECREE_*). A step whose
    batch reaches cos > 0.99 is a success; the smallest-‖m‖₁ successful (m, p) is kept.

    Score: PL1 = ‖m‖₁ / (H·W) of that mask, in [0, 1] — lower = more suspicious.
    """
    n, h, w, c = images.shape
    g = torch.Generator().manual_seed(seed)
    a, b = _initial_parameters(h, w, c, g, device)
    x_u8 = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8 stays compact on the device
    mu = None if center is None else center.to(device=device, dtype=torch.float32).reshape(1, -1)
    t0 = time.perf_counter()
    search, trace, stopped = _optimise(encode, x_u8, a, b, g, mu, steps=steps, seconds=seconds,
                                       threshold=threshold, batch=min(batch, n), early_stop=early_stop,
                                       progress=progress)  # fmt: skip
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        if search.best is None:
            m, p = _mask_pattern(a, b)
            pl1_best, cos_batch = 1.0, math.nan
        else:
            pl1_best, m, p, cos_batch = search.best
    stamped = encode_batched(encode, x_u8, device, ENCODE_BATCH,
                             prepare=lambda x, _a, _b: (1 - m) * to_float(x) + m * p)
    n_steps = len(trace["step"])
    return DecreeResult(
        pl1=float(pl1_best),
        success=search.best is not None,
        mask=m[0, 0].cpu().numpy().astype(np.float64),
        pattern=p[0].permute(1, 2, 0).cpu().numpy().astype(np.float64),
        cos_batch=float(cos_batch),
        cos_all=float(mean_pairwise_cosine(stamped, center)),
        steps=n_steps,
        seconds=elapsed,
        first_success_step=search.first_success,
        stopped=stopped,
        trace=_thin(trace, n_steps),
    )


def _optimise(encode: EncodeFn, x_u8: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g: torch.Generator,
              mu: torch.Tensor | None, *, steps: int, seconds: float, threshold: float, batch: int, early_stop: bool,
              progress: ProgressFn) -> tuple[_Search, dict[str, list[float]], str]:  # fmt: skip
    """DECREE's Adam loop on a, b (in place) until `steps`, `seconds` or the early stop; returns the search
    state, the per-step trace and why it stopped."""
    n, (h, w) = x_u8.shape[0], x_u8.shape[1:3]
    opt = torch.optim.Adam([a, b], lr=decree_lr(0), betas=DECREE_BETAS)
    lam, search = _Lambda(), _Search()
    trace: dict[str, list[float]] = {"step": [], "cos": [], "pl1": [], "lambda": [], "success": []}
    t0 = time.perf_counter()
    for step in range(steps):
        if time.perf_counter() - t0 >= seconds:
            return search, trace, "seconds"
        for group in opt.param_groups:
            group["lr"] = decree_lr(step)
        idx = torch.randperm(n, generator=g)[:batch].to(x_u8.device)
        m, p = _mask_pattern(a, b)
        cos = _batch_cosine(encode, (1 - m) * to_float(x_u8[idx]) + m * p, mu)
        l1 = m.sum()
        loss = -cos + lam.value * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        cos_v, pl1_v = float(cos.detach()), float(l1.detach()) / (h * w)
        success = cos_v > threshold
        search.record(step, success, pl1_v, cos_v, m, p)
        opt.step()
        lam.update(success)
        for key, val in zip(trace, (step, cos_v, pl1_v, lam.value, float(success)), strict=True):
            trace[key].append(float(val))
        if (step + 1) % PROGRESS_EVERY == 0:
            frac = max((step + 1) / max(steps, 1), (time.perf_counter() - t0) / max(seconds, 1e-9))
            progress(min(frac, 1.0), f"DECREE step {step + 1}: cos {cos_v:.3f}, PL1 {pl1_v:.3f}"
                     + (f", best {search.best[0]:.3f}" if search.best else ""))  # fmt: skip
        if early_stop and success and search.es_count > DECREE_EARLY_STOP:
            return search, trace, "early stop"
    return search, trace, "steps"


def _thin(trace: dict[str, list[float]], steps: int) -> dict[str, list[float]]:
    """At most DECREE_TRACE_POINTS evenly spaced steps of the trace (first and last kept)."""
    keep = np.unique(np.linspace(0, steps - 1, min(steps, DECREE_TRACE_POINTS)).round().astype(int)) if steps else []
    return {k: [v[i] for i in keep] for k, v in trace.items()}
