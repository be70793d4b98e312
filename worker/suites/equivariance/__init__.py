"""Equivariance suite: how an encoder's features respond to known image transformations (label-free).

The contract is shared/METRICS.md, "Equivariance suite". f is the encoder, x an image, T a transformation
with explicit parameters. Every transformation runs batched on the device in plain torch (affine_grid /
grid_sample, flips, RGB / HSV colour arithmetic, separable Gaussian convolution), from parameters drawn with
numpy generators seeded by (seed, family), and every choice is written into the result's variant.

Families (FAMILIES; strengths are the fixed transforms g used by A and C, the random range is B's):

  family      parameters            fixed g (A, C)                         random (B)              target
  rotation    angle, ° CCW          ±5, ±15, ±30, ±45                       U(−45, 45)              (sin, cos)
  rot90       k (×90° CCW)          90, 180, 270                            {0, 1, 2, 3}            class
  translation dx, dy (px @ 32 px)   (±s, 0), (0, ±s), s ∈ {2, 5, 10}        U(−10, 10)²             (dx, dy)
  scale       area of centred crop  0.75, 0.5, 0.25 (strength 1 − area)     U(0.25, 1)              area
  hflip/vflip flag                  flipped                                 {0, 1}                  class
  brightness  factor                1 ± {0.1, 0.2, 0.4}                     U(0.6, 1.4)             factor
  contrast    factor                1 ± {0.1, 0.2, 0.4}                     U(0.6, 1.4)             factor
  saturation  factor                1 ± {0.1, 0.2, 0.4}                     U(0.6, 1.4)             factor
  hue         shift (turns)         ±0.05, ±0.1                             U(−0.1, 0.1)            shift
  colour      b, c, s, h jointly    — (B only; A and C come from the four)  the four ranges above   4 outputs
  grayscale   flag                  grey                                    {0, 1}                  class
  blur        σ (px @ 32 px)        0.5, 1, 2                               U(0, 2)                 σ

Geometry. Images are centre-cropped to a square first (rot90 needs one). Pixel-valued strengths
(translation, blur σ) are given at 32 px, the built-in datasets' size, and scaled by side / 32 (exactly the
METRICS.md values at 32 px). grid_sample is bilinear, align_corners=False, padding_mode="border".
Masking (METRICS.md: "centre-crop or mask to a disc"): **rotation uses the disc mask** — both x and Tx are
multiplied by the inscribed disc (pixel centres within side/2 of the image centre, 0 outside), so the
rotated corners never show and the two views share the same support. rot90, flips and centred zoom-in crops
sample no pixel outside the image, so they need no mask. A translation band cannot be hidden by a disc or a
centre crop without cutting most of a 32 px image at 10 px shifts; it is filled by edge replication
("border" padding) instead — invisible on uniform backgrounds (the shapes dataset), a visible smear on
natural images. Colour: brightness x·b; contrast (x − m)·c + m with m the mean luma of the image;
saturation g + (x − g)·s with g the luma image; each clamped to [0, 1] (torchvision's blends); hue: RGB → HSV,
h + shift mod 1, → RGB; luma = Rec. 601 (0.299, 0.587, 0.114); blur: separable Gaussian of radius
ceil(3 σ_max), reflect padding (torchvision / scipy "mirror").

Metrics (keys; {fam} is a family name, head ∈ {linear, mlp}):
  A. invariance (families with fixed g):
     cos_s = mean over images and over the g of strength s of cos(f(x), f(gx)); corrected_s = mean of
     (1 − cos(z, z_shuf)) − (1 − cos(z, z_g)), z = f(x), z_g = f(gx), z_shuf = z_g with its dimensions
     permuted (one seeded permutation per image). Curves start at strength 0 (cos 1; corrected
     1 − cos(z, z_shuf)). `invariance_auc_{fam}` / `invariance_corrected_auc_{fam}`: trapezoidal area
     under each curve over strength / max strength ∈ [0, 1] (1 = perfectly invariant for the cosine).
     The corrected score's ceiling is its strength-0 value 1 − cos(z, z_shuf) (≈ 0.2 for features with a
     large shared offset, ≈ 1 for centred ones), so it does not rank encoders by itself;
     `invariance_normalized_auc_{fam}` is the AUC of the corrected curve divided by its strength-0 value
     (1 = invariant, 0 = as far as a dimension-shuffled copy) — an addition to METRICS.md.
  B. information retained (Wang et al. 2025, arXiv 2503.18753; SIE, Garrido et al. ICML 2023): B_DRAWS random
     parameters per image (pairs (x, Tx)); a head on standardised concat[f(x), f(Tx)] predicts them; images
     split 80/20 (test held out; every pair of an image on its side), 20 % of the train images pick the ridge
     α / the MLP's epoch. A linear head cannot compute the products that relate x to Tx (an angle between two
     views, a ratio of intensities), so on most encoders the rotation R² is ≈ 0 with the linear head and the
     MLP is the informative one; it needs thousands of pairs (hence B_DRAWS). Continuous families:
       `r2_{head}_{fam}`       mean over outputs of 1 − RSS_j / TSS_j (scikit-learn r2_score, uniform_average)
       `r2global_{head}_{fam}` SIE's single R²: 1 − Σ(y − ŷ)² / Σ(y − ȳ)², ȳ the mean of ALL target entries
                               (SIE eval_angle_prediction.py r2_score)
     Discrete families (rot90, hflip, vflip, grayscale): `balacc_{head}_{fam}`, mean per-class recall on test.
     Single view (E-SSL, Dangovski et al. ICLR 2022): `rot4_single_view_acc` / `rot4_single_view_acc_mlp`,
     4-way rot90 accuracy from f(Tx) alone.
     linear = closed-form ridge (one-hot targets + argmax for classes); mlp = SIE's deep-end head (two hidden
     layers of 1024, ReLU; Adam lr 1e-3, no weight decay), MLP_EPOCHS epochs of MLP_BATCH, best epoch on the
     validation part, seeded init and order. Wider or multiplicative heads did not do better on the pixel
     encoder (benchmarks/RESULTS.md, equivariance-ceiling); the head, not the encoder, caps raw pixels'
     contrast and saturation R² (≈ 0.4 against an oracle's 0.98).
  C. equivariance structure (Lenc & Vedaldi, CVPR 2015; retrieval as SIE eval_MRR_Hk.py): per fixed g,
     ridge M_g (with intercept) fitted on train images, f(gx) ≈ M_g f(x) (α picked on the train holdout);
     on test images `relerr_{fam}` = mean over g of Σ‖f(gx) − M_g f(x)‖² / Σ‖f(gx) − mean_test f(gx)‖²;
     `mrr_{fam}`, `hit{1,5,10}_{fam}`: rank of f(gx) among the family's candidates {f(g′x)} of the same image
     (identity included) by cosine to M_g f(x); ties count as a uniformly random order (expected reciprocal
     rank). `relerr_identity_{fam}`, `mrr_identity_{fam}`: the same with M_g = I (the invariance reference).
     Families have 2–13 candidates, so Hit@k ≥ number of candidates is 1 by construction; the chance MRR of
     each family is in figures["structure"].
  Summaries (leaderboards, radar): `equi_r2_mean` = mean of `r2_mlp_{fam}` over rotation, colour, blur,
  translation (Wang et al.'s four; `equi_r2_mean_linear` with the ridge head), `invariance_auc_mean`,
  `invariance_corrected_auc_mean` and `invariance_normalized_auc_mean` over the families run, `equi_mrr_mean` over families with C,
  `balacc_mean_linear` / `balacc_mean_mlp` over discrete families.

Cost: one encoder pass over n images per fixed g (54), per base view (plain / disc-masked: 2) and per B draw
(13 × B_DRAWS): 108 passes with every family. Features of one family at a time stay on the device
(≤ 13 × n × D floats); B's ridge works on a float64 (B_DRAWS·n) × 2D matrix. The MLP heads dominate on a CPU:
14 heads (13 families + single view) × MLP_EPOCHS epochs over ≈ 0.64·B_DRAWS·n pairs through a 1024 × 1024
layer. Measured, every family, n = 1000, 2 CPU cores (AMD EPYC): a 24-d CNN 225 s, ≈ 15 s per MLP head
(with the one-hidden-layer 256 head used before, a 64-d ConvNet took ≈ 40 s in all on one thread). On one
H200, ResNet-18 (CIFAR stem, 512-d) at 32 px took 21 s with that smaller head; the SIE head has not been timed
on a GPU yet. The ridge numbers agree across
devices to rounding; the MLP heads (float32, different kernels) moved balanced accuracies / R² by up to ≈ 0.04
between CPU and CUDA at n = 500 (smaller head).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worker.suites.base import ProgressFn, SuiteResult, no_progress

# --- protocol constants -------------------------------------------------------------------------------

# Strengths (METRICS.md). Pixel-valued ones are at REFERENCE_SIZE and scale with the image side.
ROTATION_DEG = (5.0, 15.0, 30.0, 45.0)
ROT90_K = (1, 2, 3)
TRANSLATION_PX = (2.0, 5.0, 10.0)
SCALE_AREA = (0.75, 0.5, 0.25)
SCALE_RANGE = (0.25, 1.0)
JITTER_DELTA = (0.1, 0.2, 0.4)  # brightness / contrast / saturation factors 1 ± δ
HUE_DELTA = (0.05, 0.1)
BLUR_SIGMA = (0.5, 1.0, 2.0)
REFERENCE_SIZE = 32
# Rec. 601 luma, as torchvision.transforms.functional.rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)
BLUR_TRUNCATE = 3.0  # kernel radius = ceil(3 σ_max)
# Protocol of B and C.
DEFAULT_N_IMAGES = 1000
TEST_FRACTION = 0.2  # of the images, held out for every reported number
VAL_FRACTION = 0.2  # of the train images, to pick the ridge α and the MLP's epoch
MIN_IMAGES = 20
RIDGE_ALPHAS_PER_SAMPLE = tuple(10.0 ** k for k in range(-6, 4))  # α = value × n_fit (scikit-learn's α units)
B_DRAWS = 4  # random parameter draws (pairs) per image in B: 1000 images → 4000 pairs
# The MLP head is SIE's "deep end" (eval_angle_prediction.py: Linear(2D, 1024) → ReLU → Linear(1024, 1024) → ReLU
# → Linear(k); Adam, lr 1e-3, no weight decay). SIE trains 50 epochs of batch 256, each over every 3DIEBench
# training object with a fresh random pair of its views (tens of thousands of pairs an epoch); with the suite's
# few thousand fixed pairs that would be a few hundred steps, so we run more, smaller epochs and keep the best
# one on the validation images.
MLP_HIDDEN = (1024, 1024)
MLP_EPOCHS = 100
MLP_BATCH = 128
MLP_LR = 1e-3
MLP_WEIGHT_DECAY = 0.0
HIT_KS = (1, 5, 10)
R2_SUMMARY_FAMILIES = ("rotation", "colour", "blur", "translation")  # Wang et al. 2025's four
COS_EPS = 1e-8
STD_FLOOR = 1e-12  # columns with a smaller train std are only centred

FAMILY_NAMES = (
    "rotation", "rot90", "translation", "scale", "hflip", "vflip",
    "brightness", "contrast", "saturation", "hue", "colour", "grayscale", "blur",
)  # fmt: skip


# --- families -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One transformation family. `elements` are the fixed transforms g (strength, parameter row) of A and C;
    B draws `random` parameters per image; `targets` name B's regression outputs or, for discrete families,
    its classes (the class is the first parameter, an integer)."""

    name: str
    kind: str  # "continuous" | "discrete"
    params: tuple[str, ...]
    unit: str
    elements: tuple[tuple[float, tuple[float, ...]], ...]
    targets: tuple[str, ...]
    random: str
    mask: str = "none"  # "disc": both views multiplied by the inscribed disc

    @property
    def has_elements(self) -> bool:
        return bool(self.elements)


def _signed(strengths: Sequence[float], centre: float = 0.0) -> tuple[tuple[float, tuple[float, ...]], ...]:
    return tuple((s, (centre + sign * s,)) for s in strengths for sign in (-1.0, 1.0))


def _translations() -> tuple[tuple[float, tuple[float, ...]], ...]:
    out = []
    for s in TRANSLATION_PX:
        out += [(s, (s, 0.0)), (s, (-s, 0.0)), (s, (0.0, s)), (s, (0.0, -s))]
    return tuple(out)


_JITTER_RANGE = f"U({1 - JITTER_DELTA[-1]:g}, {1 + JITTER_DELTA[-1]:g})"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("rotation", "continuous", ("angle_deg",), "degrees", _signed(ROTATION_DEG), ("sin", "cos"),
               f"angle ~ U(-{ROTATION_DEG[-1]:g}, {ROTATION_DEG[-1]:g})", mask="disc"),
        Family("rot90", "discrete", ("k",), "degrees", tuple((90.0 * k, (float(k),)) for k in ROT90_K),
               ("0", "90", "180", "270"), "k ~ U{0, 1, 2, 3}"),
        Family("translation", "continuous", ("dx_px", "dy_px"), "px at 32 px", _translations(), ("dx", "dy"),
               f"dx, dy ~ U(-{TRANSLATION_PX[-1]:g}, {TRANSLATION_PX[-1]:g}) px at 32 px"),
        Family("scale", "continuous", ("area",), "1 - area", tuple((1.0 - a, (a,)) for a in SCALE_AREA),
               ("area",), f"area ~ U({SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}), centred square crop"),
        Family("hflip", "discrete", ("flip",), "flag", ((1.0, (1.0,)),), ("id", "flip"), "flip ~ U{0, 1}"),
        Family("vflip", "discrete", ("flip",), "flag", ((1.0, (1.0,)),), ("id", "flip"), "flip ~ U{0, 1}"),
        Family("brightness", "continuous", ("factor",), "|factor - 1|", _signed(JITTER_DELTA, 1.0),
               ("factor",), f"factor ~ {_JITTER_RANGE}"),
        Family("contrast", "continuous", ("factor",), "|factor - 1|", _signed(JITTER_DELTA, 1.0),
               ("factor",), f"factor ~ {_JITTER_RANGE}"),
        Family("saturation", "continuous", ("factor",), "|factor - 1|", _signed(JITTER_DELTA, 1.0),
               ("factor",), f"factor ~ {_JITTER_RANGE}"),
        Family("hue", "continuous", ("shift",), "|shift| (turns)", _signed(HUE_DELTA), ("shift",),
               f"shift ~ U(-{HUE_DELTA[-1]:g}, {HUE_DELTA[-1]:g})"),
        Family("colour", "continuous", ("brightness", "contrast", "saturation", "hue"), "", (),
               ("brightness", "contrast", "saturation", "hue"),
               f"brightness, contrast, saturation ~ {_JITTER_RANGE}, hue ~ U(-{HUE_DELTA[-1]:g}, "
               f"{HUE_DELTA[-1]:g}), applied in this order"),
        Family("grayscale", "discrete", ("gray",), "flag", ((1.0, (1.0,)),), ("id", "gray"), "gray ~ U{0, 1}"),
        Family("blur", "continuous", ("sigma_px",), "sigma (px at 32 px)", tuple((s, (s,)) for s in BLUR_SIGMA),
               ("sigma",), f"sigma ~ U(0, {BLUR_SIGMA[-1]:g}) px at 32 px"),
    )
}  # fmt: skip


def family_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of a family's random parameters: default_rng([seed, crc32(name)]) — the same numbers
    whichever other families run."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def sample_params(family: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n, len(params)] random parameters of B (distributions in FAMILIES[family].random)."""
    j, h = JITTER_DELTA[-1], HUE_DELTA[-1]
    if family == "rotation":
        return rng.uniform(-ROTATION_DEG[-1], ROTATION_DEG[-1], (n, 1))
    if family == "rot90":
        return rng.integers(0, 4, (n, 1)).astype(np.float64)
    if family == "translation":
        return rng.uniform(-TRANSLATION_PX[-1], TRANSLATION_PX[-1], (n, 2))
    if family == "scale":
        return rng.uniform(SCALE_RANGE[0], SCALE_RANGE[1], (n, 1))
    if family in ("hflip", "vflip", "grayscale"):
        return rng.integers(0, 2, (n, 1)).astype(np.float64)
    if family in ("brightness", "contrast", "saturation"):
        return rng.uniform(1 - j, 1 + j, (n, 1))
    if family == "hue":
        return rng.uniform(-h, h, (n, 1))
    if family == "colour":
        return np.concatenate([rng.uniform(1 - j, 1 + j, (n, 3)), rng.uniform(-h, h, (n, 1))], axis=1)
    if family == "blur":
        return rng.uniform(0.0, BLUR_SIGMA[-1], (n, 1))
    raise ValueError(f"unknown family {family!r}")


def targets(family: str, params: np.ndarray) -> np.ndarray:
    """B's targets from parameters: rotation as (sin θ, cos θ); classes as int64; others the parameters."""
    fam = FAMILIES[family]
    if fam.kind == "discrete":
        return params[:, 0].astype(np.int64)
    if family == "rotation":
        t = np.deg2rad(params[:, 0])
        return np.stack([np.sin(t), np.cos(t)], axis=1)
    return np.asarray(params, dtype=np.float64)


# --- transformations (float NCHW in [0, 1], on any device) ----------------------------------------------


def disc_mask(h: int, w: int, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
    """[1, 1, h, w] mask: 1 where the pixel centre lies within min(h, w) / 2 of the image centre, else 0."""
    r = min(h, w) / 2.0
    yy = torch.arange(h, dtype=torch.float64, device=device) + 0.5 - h / 2.0
    xx = torch.arange(w, dtype=torch.float64, device=device) + 0.5 - w / 2.0
    inside = yy[:, None] ** 2 + xx[None, :] ** 2 <= r * r
    return inside.to(dtype)[None, None]


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample x with affine_grid matrices theta [N, 2, 3] (output coords → input coords, normalised)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotate(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate square images counter-clockwise (as displayed, row 0 at the top) by angle_deg [N] about the
    centre. Output pixel p samples the input at R(−θ) p (normalised coordinates, y pointing down)."""
    t = torch.deg2rad(angle_deg.to(torch.float64))
    c, s = torch.cos(t), torch.sin(t)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = c, -s
    theta[:, 1, 0], theta[:, 1, 1] = s, c
    return _affine(x, theta)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift the content by (dx, dy) pixels (right, down); the uncovered band repeats the edge pixels."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * dx.to(torch.float64) / w
    theta[:, 1, 2] = -2.0 * dy.to(torch.float64) / h
    return _affine(x, theta)


def zoom(x: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Centred square crop covering `area` (fraction ≤ 1) of the image, resized back (bilinear)."""
    f = torch.sqrt(area.to(torch.float64))
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = f
    return _affine(x, theta)


def rot90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """torch.rot90(x_i, k_i, dims=(2, 3)) per image: k quarter turns counter-clockwise."""
    k = k.round().long() % 4
    out = x.clone()
    for j in (1, 2, 3):
        sel = k == j
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], j, dims=(2, 3))
    return out


def flip(x: torch.Tensor, on: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip images with on_i ≥ 0.5 along `dim` (3: horizontal, 2: vertical)."""
    sel = (on >= 0.5).view(-1, 1, 1, 1)
    return torch.where(sel, torch.flip(x, dims=(dim,)), x)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma [N, 1, H, W] of RGB images."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def grayscale(x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    sel = (on >= 0.5).view(-1, 1, 1, 1)
    return torch.where(sel, luma(x).expand_as(x), x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1).to(x.dtype)).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    m = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * factor.view(-1, 1, 1, 1).to(x.dtype) + m).clamp(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    g = luma(x)
    return ((x - g) * factor.view(-1, 1, 1, 1).to(x.dtype) + g).clamp(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1] → HSV, all channels in [0, 1] (colorsys conventions, h in turns)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    h = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d)
    )
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV [N, 3, H, W] (h in turns) → RGB, the inverse of rgb_to_hsv."""
    h, s, v = x.unbind(dim=1)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (r, g, b) for sectors 0..5, as colorsys.hsv_to_rgb
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for j, rgb in enumerate(table):
        sel = (i == j).unsqueeze(1)
        out = torch.where(sel, torch.stack(rgb, dim=1), out)
    return out


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1).to(x.dtype), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1)).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-image σ [N] (pixels); taps −r..r, r = ceil(3 σ_max) unless given,
    reflect padding (scipy.ndimage mode "mirror"). σ = 0 is the identity."""
    n, c, h, w = x.shape
    sig = sigma.to(device=x.device, dtype=torch.float64).clamp_min(0.0)
    if radius is None:
        radius = int(math.ceil(BLUR_TRUNCATE * float(sig.max()))) if n else 0
    radius = max(0, min(radius, h - 1, w - 1))
    if radius == 0:
        return x
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    safe = sig.clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (taps[None, :] / safe) ** 2)
    k = torch.where((sig > 0)[:, None], k, (taps == 0).to(k.dtype)[None, :].expand_as(k))
    k = (k / k.sum(dim=1, keepdim=True)).to(x.dtype)
    kc = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kc.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kc.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_transform(family: str, x: torch.Tensor, params: torch.Tensor, pixel_scale: float = 1.0) -> torch.Tensor:
    """T(x) for a batch: x float [N, 3, H, W] in [0, 1] (square), params [N, len(FAMILIES[family].params)]
    in the family's units (pixel units at 32 px; multiplied by pixel_scale here). The disc mask of the rotation
    family is applied by the caller to both views (`view`)."""
    p = params.to(x.device)
    if family == "rotation":
        return rotate(x, p[:, 0])
    if family == "rot90":
        return rot90(x, p[:, 0])
    if family == "translation":
        return translate(x, p[:, 0] * pixel_scale, p[:, 1] * pixel_scale)
    if family == "scale":
        return zoom(x, p[:, 0])
    if family == "hflip":
        return flip(x, p[:, 0], 3)
    if family == "vflip":
        return flip(x, p[:, 0], 2)
    if family == "brightness":
        return adjust_brightness(x, p[:, 0])
    if family == "contrast":
        return adjust_contrast(x, p[:, 0])
    if family == "saturation":
        return adjust_saturation(x, p[:, 0])
    if family == "hue":
        return adjust_hue(x, p[:, 0])
    if family == "colour":
        y = adjust_brightness(x, p[:, 0])
        y = adjust_contrast(y, p[:, 1])
        y = adjust_saturation(y, p[:, 2])
        return adjust_hue(y, p[:, 3])
    if family == "grayscale":
        return grayscale(x, p[:, 0])
    if family == "blur":
        radius = int(math.ceil(BLUR_TRUNCATE * BLUR_SIGMA[-1] * pixel_scale))
        return gaussian_blur(x, p[:, 0] * pixel_scale, radius=radius)
    raise ValueError(f"unknown family {family!r}")


def view(family: str, x: torch.Tensor, params: torch.Tensor | None, pixel_scale: float = 1.0) -> torch.Tensor:
    """What the encoder sees: T(x) (or x itself when params is None), then the family's mask."""
    y = x if params is None else apply_transform(family, x, params, pixel_scale)
    if FAMILIES[family].mask == "disc":
        y = y * disc_mask(y.shape[-2], y.shape[-1], y.device, y.dtype)
    return y


def to_square_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, C] (C = 1 or 3) → float [N, 3, s, s] in [0, 1], centre-cropped to s = min(H, W)."""
    n, h, w, c = images_u8.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = images_u8[:, top : top + s, left : left + s].permute(0, 3, 1, 2).float().div_(255.0)
    return x.expand(-1, 3, -1, -1) if c == 1 else x


# --- metric pieces ------------------------------------------------------------------------------------


def r2_per_output(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """Mean over outputs of R²_j = 1 − Σ_i (y_ij − ŷ_ij)² / Σ_i (y_ij − ȳ_j)² (scikit-learn r2_score,
    multioutput="uniform_average"; a constant column scores 1 when predicted exactly, else 0)."""
    y, pred = _f64(y).reshape(len(y), -1), _f64(pred).reshape(len(y), -1)
    rss = ((y - pred) ** 2).sum(axis=0)
    tss = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / np.where(tss > 0, tss, 1.0), np.where(rss > 0, 0.0, 1.0))
    return float(r2.mean())


def r2_global(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """SIE's R² (Garrido et al. 2023, eval_angle_prediction.py): 1 − Σ(y − ŷ)² / Σ(y − ȳ)², sums over every
    entry, ȳ the mean of all target entries (one scalar)."""
    y, pred = _f64(y), _f64(pred)
    tss = float(((y - y.mean()) ** 2).sum())
    rss = float(((y - pred) ** 2).sum())
    if tss <= 0:
        return 1.0 if rss == 0 else 0.0
    return 1.0 - rss / tss


def balanced_accuracy(y: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """Mean over the classes present in y of the recall (scikit-learn balanced_accuracy_score)."""
    y, pred = np.asarray(_np(y)).ravel(), np.asarray(_np(pred)).ravel()
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else math.nan


def retrieval_scores(sim: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, ks: Sequence[int] = HIT_KS
                     ) -> dict[str, float]:  # fmt: skip
    """MRR and Hit@k of the target candidate, from similarities sim [M, G] (higher = closer) and target
    indices [M]. With a = #candidates strictly closer than the target and t = #other candidates tied with
    it, the rank is uniform over a+1 .. a+t+1 (a random order among ties): 1/rank and [rank ≤ k] are their
    expectations, so an encoder that maps every candidate to the same point scores the chance level."""
    s = _f64(sim)
    tgt = np.asarray(_np(target)).astype(np.int64).ravel()
    m = s.shape[0]
    if m == 0:
        return {"mrr": math.nan, **{f"hit{k}": math.nan for k in ks}}
    st = s[np.arange(m), tgt][:, None]
    above = (s > st).sum(axis=1).astype(np.float64)
    ties = (s == st).sum(axis=1).astype(np.float64) - 1.0
    # E[1/r], r uniform on a+1..a+t+1: (H(a+t+1) − H(a)) / (t+1), H the harmonic numbers
    g = s.shape[1]
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, g + 1))])
    rr = (harmonic[(above + ties + 1).astype(int)] - harmonic[above.astype(int)]) / (ties + 1.0)
    out = {"mrr": float(rr.mean())}
    for k in ks:
        out[f"hit{k}"] = float((np.clip(k - above, 0.0, ties + 1.0) / (ties + 1.0)).mean())
    return out


def chance_mrr(n_candidates: int) -> float:
    """MRR of a uniformly random ranking of n candidates: (1/n) Σ_{r=1..n} 1/r."""
    return float(np.mean(1.0 / np.arange(1, n_candidates + 1)))


def curve_auc(strengths: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under values over strengths / max(strengths) ∈ [0, 1]; the curve must include its
    strength-0 point."""
    s = np.asarray(strengths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, v = s[order] / s.max(), v[order]
    return float(np.sum((s[1:] - s[:-1]) * (v[1:] + v[:-1]) * 0.5))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cos(a_i, b_i) = a_i·b_i / max(‖a_i‖‖b_i‖, eps)."""
    a, b = a.double(), b.double()
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(COS_EPS)


# --- ridge (closed form) ------------------------------------------------------------------------------


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge with intercept: argmin_{W, b} ‖y − xW − b‖² + α‖W‖² (scikit-learn Ridge, fit_intercept=True).
    Closed form on centred data, float64: W = (XᵀX + αI)⁻¹ Xᵀ Y when p ≤ n, else the dual Xᵀ(XXᵀ + αI)⁻¹ Y;
    b = ȳ − x̄ W. Returns (W [p, k], b [k])."""
    x, y = x.double(), y.double()
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    xm, ym = x.mean(dim=0), y2.mean(dim=0)
    xc, yc = x - xm, y2 - ym
    n, p = xc.shape
    if p <= n:
        a = xc.T @ xc + alpha * torch.eye(p, dtype=xc.dtype, device=xc.device)
        w = torch.linalg.solve(a, xc.T @ yc)
    else:
        a = xc @ xc.T + alpha * torch.eye(n, dtype=xc.dtype, device=xc.device)
        w = xc.T @ torch.linalg.solve(a, yc)
    b = ym - xm @ w
    return (w[:, 0], b[0]) if squeeze else (w, b)


class RidgeSolver:
    """Ridge with intercept for many targets and α from one thin SVD of the centred inputs X − x̄ = U S Vᵀ:
    W(α) = V diag(s / (s² + α)) Uᵀ (Y − ȳ), the same minimiser as ridge_fit."""

    def __init__(self, x: torch.Tensor):
        x = x.double()
        self.mean = x.mean(dim=0)
        u, s, vh = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.u, self.s, self.v = u, s, vh.T

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(x − x̄) V, the coordinates predictions are built from."""
        return (x.double() - self.mean) @ self.v

    def predict(self, y: torch.Tensor, alpha: float, xv_proj: torch.Tensor) -> torch.Tensor:
        """Predictions at projected points xv_proj (from `project`) of the ridge fitted to y with α."""
        y = y.double()
        ym = y.mean(dim=0)
        uty = self.u.T @ (y - ym)
        return xv_proj @ ((self.s / (self.s**2 + alpha))[:, None] * uty) + ym


def _pick_alpha(
    solver: RidgeSolver, y_fit: torch.Tensor, x_val_proj: torch.Tensor, score: Callable[[torch.Tensor], float],
    n_fit: int,
) -> float:  # fmt: skip
    """The α of the grid (RIDGE_ALPHAS_PER_SAMPLE × n_fit) with the best validation score; ties → larger α."""
    best, best_alpha = -math.inf, None
    for a in sorted(RIDGE_ALPHAS_PER_SAMPLE, reverse=True):
        alpha = a * n_fit
        sc = score(solver.predict(y_fit, alpha, x_val_proj))
        if best_alpha is None or sc > best + 1e-12:
            best, best_alpha = sc, alpha
    return float(best_alpha)


def _standardize(x: torch.Tensor, train: np.ndarray) -> torch.Tensor:
    """Columns centred and scaled with the train rows' mean and std (std < STD_FLOOR → only centred)."""
    x = x.double()
    mu = x[train].mean(dim=0)
    sd = x[train].std(dim=0)
    sd = torch.where(sd > STD_FLOOR * max(float(sd.max()), 1.0), sd, torch.ones_like(sd))
    return (x - mu) / sd


# --- small MLP head (torch, seeded) ------------------------------------------------------------------


def mlp_fit_predict(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    x_test: torch.Tensor,
    *,
    n_classes: int | None = None,
    seed: int = 0,
    hidden: Sequence[int] = MLP_HIDDEN,
    epochs: int = MLP_EPOCHS,
    batch: int = MLP_BATCH,
    lr: float = MLP_LR,
    weight_decay: float = MLP_WEIGHT_DECAY,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Linear(p, h1) → ReLU → … → Linear(h_last, k) (SIE's deep-end head with the default `hidden`), Adam(W),
    minibatches in a seeded order; MSE on standardised targets (regression) or cross-entropy (n_classes given).
    Keeps the epoch with the best validation score (R² per output / balanced accuracy) and returns its test
    predictions (targets' units, or class ids). Weights are drawn on the CPU from torch.Generator(seed)
    (PyTorch's default Linear init), so the head is the same on every device up to arithmetic."""
    dev = x_fit.device
    with torch.inference_mode(False), torch.enable_grad():
        xf, xv, xt = (t.detach().clone().float() for t in (x_fit, x_val, x_test))
        if n_classes is None:
            yf = y_fit.detach().clone().double().reshape(len(y_fit), -1)
            y_mu, y_sd = yf.mean(dim=0), yf.std(dim=0).clamp_min(1e-12)
            yf = ((yf - y_mu) / y_sd).float()
            k = yf.shape[1]
        else:
            yf = y_fit.detach().clone().long()
            k = n_classes
        gen = torch.Generator().manual_seed(seed)

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(shape, generator=gen) * 2 - 1) * bound).to(dev).requires_grad_(True)

        widths = [xf.shape[1], *hidden, k]
        layers = [(uniform((a, b), a), uniform((b,), a)) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        params = [t for layer in layers for t in layer]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=dev.type == "cuda")

        def forward(x: torch.Tensor) -> torch.Tensor:
            for i, (w, b) in enumerate(layers):
                x = torch.addmm(b, x, w)
                if i < len(layers) - 1:
                    x = torch.relu(x)
            return x

        def decode(out: torch.Tensor) -> torch.Tensor:
            if n_classes is None:
                return out.double() * y_sd + y_mu
            return out.argmax(dim=1)

        def val_score() -> float:
            with torch.no_grad():
                pred = decode(forward(xv))
            if n_classes is None:
                return r2_per_output(y_val, pred)
            return balanced_accuracy(y_val, pred)

        order_rng = np.random.default_rng(seed)
        n = xf.shape[0]
        best, best_epoch, best_state = -math.inf, -1, [t.detach().clone() for t in params]
        for epoch in range(epochs):
            perm = torch.from_numpy(order_rng.permutation(n)).to(dev)
            for a in range(0, n, batch):
                idx = perm[a : a + batch]
                out = forward(xf[idx])
                if n_classes is None:
                    loss = F.mse_loss(out, yf[idx])
                else:
                    loss = F.cross_entropy(out, yf[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sc = val_score()
            if sc > best:
                best, best_epoch, best_state = sc, epoch, [t.detach().clone() for t in params]
        with torch.no_grad():
            for t, s in zip(params, best_state, strict=True):
                t.copy_(s)
            pred = decode(forward(xt))
    return pred.detach(), {"best_epoch": float(best_epoch + 1), "val_score": float(best)}


# --- the suite ----------------------------------------------------------------------------------------


@dataclass
class _Split:
    fit: np.ndarray  # train rows used to fit (train minus validation)
    val: np.ndarray  # train rows used to pick α / the MLP epoch
    train: np.ndarray  # fit ∪ val (refit with the chosen α)
    test: np.ndarray

    def repeat(self, n: int, k: int) -> _Split:
        """The same split over k copies of n rows (row d·n + i is copy d of row i)."""

        def rep(rows: np.ndarray) -> np.ndarray:
            return np.concatenate([rows + d * n for d in range(k)])

        return _Split(fit=rep(self.fit), val=rep(self.val), train=rep(self.train), test=rep(self.test))


def make_split(n: int, seed: int) -> _Split:
    """Images → test (TEST_FRACTION) and train; train → fit and validation (VAL_FRACTION); seeded."""
    rng = np.random.default_rng([seed, 1])
    perm = rng.permutation(n)
    n_test = max(1, int(round(TEST_FRACTION * n)))
    test, train = np.sort(perm[:n_test]), perm[n_test:]
    n_val = max(1, int(round(VAL_FRACTION * len(train))))
    val, fit = np.sort(train[:n_val]), np.sort(train[n_val:])
    return _Split(fit=fit, val=val, train=np.sort(train), test=test)


class _Encoder:
    """Batched features of transformed views of the (device-resident, uint8) images."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int,
                 pixel_scale: float):  # fmt: skip
        self.encode, self.images, self.batch_size, self.pixel_scale = encode, images, batch_size, pixel_scale
        self.passes = 0

    def features(self, family: str, params: np.ndarray | None) -> torch.Tensor:
        """f(view) for every image: params [n, k] per image, or None for the untransformed (masked) view."""
        n = self.images.shape[0]
        dev = self.images.device
        p_all = None if params is None else torch.as_tensor(params, dtype=torch.float64, device=dev)
        chunks = []
        with torch.no_grad():
            for a in range(0, n, self.batch_size):
                b = min(n, a + self.batch_size)
                x = to_square_float(self.images[a:b])
                v = view(family, x, None if p_all is None else p_all[a:b], self.pixel_scale)
                z = self.encode(v.contiguous())
                if not isinstance(z, torch.Tensor):
                    raise TypeError(f"encode must return a tensor, got {type(z).__name__}")
                z = z.reshape(z.shape[0], -1).float()
                if z.shape[0] != b - a:
                    raise ValueError(f"encode returned {z.shape[0]} rows for a batch of {b - a} images")
                chunks.append(z.to(dev))
        self.passes += 1
        z = torch.cat(chunks)
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"the encoder returned NaN or infinite features ({family})")
        return z


def _element_params(fam: Family, n: int, j: int) -> np.ndarray:
    return np.tile(np.asarray(fam.elements[j][1], dtype=np.float64), (n, 1))


def invariance_curve(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], perm: torch.Tensor) -> dict[str, Any]:
    """A: mean cosine and shuffled-baseline corrected score per strength (strength 0 included)."""
    z0_shuf = torch.gather(z0, 1, perm)
    strengths = sorted({s for s, _ in fam.elements})
    cos_curve, cor_curve = [1.0], [float((1.0 - cosine(z0, z0_shuf)).mean())]
    per_element = []
    for s in strengths:
        cs, cr = [], []
        for (st, _), z in zip(fam.elements, zs, strict=True):
            if st != s:
                continue
            c = cosine(z0, z)
            c_shuf = cosine(z0, torch.gather(z, 1, perm))
            cs.append(float(c.mean()))
            cr.append(float(((1.0 - c_shuf) - (1.0 - c)).mean()))
        cos_curve.append(float(np.mean(cs)))
        cor_curve.append(float(np.mean(cr)))
    for z in zs:
        per_element.append(float(cosine(z0, z).mean()))
    xs = [0.0, *strengths]
    gap = cor_curve[0]
    norm_curve = [c / gap for c in cor_curve] if gap > COS_EPS else [math.nan] * len(cor_curve)
    return {
        "strength": xs,
        "unit": fam.unit,
        "mean_cosine": cos_curve,
        "corrected": cor_curve,
        "normalized": norm_curve,
        "per_element_cosine": per_element,
        "auc": curve_auc(xs, cos_curve),
        "corrected_auc": curve_auc(xs, cor_curve),
        "normalized_auc": curve_auc(xs, norm_curve) if gap > COS_EPS else math.nan,
    }


def structure_scores(fam: Family, z0: torch.Tensor, zs: list[torch.Tensor], split: _Split) -> dict[str, Any]:
    """C: ridge M_g per fixed g, relative error and retrieval among the family's views of the same image."""
    x = _standardize(z0, split.train)
    sel = RidgeSolver(x[split.fit])
    val_proj = sel.project(x[split.val])
    full = RidgeSolver(x[split.train])
    test_proj = full.project(x[split.test])
    cands = torch.stack([z0[split.test]] + [z[split.test] for z in zs], dim=1).double()  # [m, G, D]
    cands_n = cands / cands.norm(dim=2, keepdim=True).clamp_min(COS_EPS)
    rel, rel_id, alphas, learned, ident = [], [], [], [], []
    for j, z in enumerate(zs):
        y_fit, y_val = z[split.fit].double(), z[split.val].double()

        def score(pred: torch.Tensor, y_val: torch.Tensor = y_val) -> float:
            return -float(((pred - y_val) ** 2).sum())

        alpha = _pick_alpha(sel, y_fit, val_proj, score, len(split.fit))
        pred = full.predict(z[split.train].double(), alpha, test_proj)
        yt = z[split.test].double()
        denom = float(((yt - yt.mean(dim=0)) ** 2).sum())
        denom = denom if denom > 0 else math.nan
        rel.append(float(((yt - pred) ** 2).sum()) / denom)
        rel_id.append(float(((yt - z0[split.test].double()) ** 2).sum()) / denom)
        alphas.append(alpha)
        target = np.full(len(split.test), j + 1)
        for query, bucket in ((pred, learned), (z0[split.test].double(), ident)):
            qn = query / query.norm(dim=1, keepdim=True).clamp_min(COS_EPS)
            sim = torch.einsum("md,mgd->mg", qn, cands_n)
            bucket.append(retrieval_scores(sim.cpu().numpy(), target))
    labels = [_element_label(fam, j) for j in range(len(zs))]
    summary = {
        "relerr": _nanmean(rel),
        "relerr_identity": _nanmean(rel_id),
        **{key: float(np.mean([r[key] for r in learned])) for key in learned[0]},
        **{f"{key}_identity": float(np.mean([r[key] for r in ident])) for key in ident[0]},
    }
    return {
        "elements": labels,
        "n_candidates": len(zs) + 1,
        "chance_mrr": chance_mrr(len(zs) + 1),
        "relative_error": rel,
        "relative_error_identity": rel_id,
        "mrr": [r["mrr"] for r in learned],
        "mrr_identity": [r["mrr"] for r in ident],
        "hit1": [r["hit1"] for r in learned],
        "ridge_alpha": alphas,
        "summary": summary,
    }


def _heads(
    x: torch.Tensor, y: np.ndarray, split: _Split, *, discrete: bool, n_classes: int, seed: int, mlp: bool,
    mlp_epochs: int,
) -> dict[str, Any]:  # fmt: skip
    """B: ridge and MLP heads on standardised inputs x [n, p] predicting y; scores on the test images."""
    dev = x.device
    xs = _standardize(x, split.train)
    sel = RidgeSolver(xs[split.fit])
    val_proj = sel.project(xs[split.val])
    full = RidgeSolver(xs[split.train])
    test_proj = full.project(xs[split.test])
    out: dict[str, Any] = {}
    if discrete:
        onehot = torch.zeros(len(y), n_classes, dtype=torch.float64, device=dev)
        onehot[torch.arange(len(y)), torch.as_tensor(y, device=dev)] = 1.0
        y_val = y[split.val]
        alpha = _pick_alpha(sel, onehot[split.fit], val_proj,
                            lambda p: balanced_accuracy(y_val, p.argmax(dim=1).cpu().numpy()), len(split.fit))  # fmt: skip
        pred = full.predict(onehot[split.train], alpha, test_proj).argmax(dim=1).cpu().numpy()
        out["linear"] = {"balanced_accuracy": balanced_accuracy(y[split.test], pred),
                         "accuracy": float(np.mean(pred == y[split.test])), "alpha": alpha}  # fmt: skip
    else:
        yt = torch.as_tensor(y, dtype=torch.float64, device=dev)
        y_val = y[split.val]
        alpha = _pick_alpha(sel, yt[split.fit], val_proj, lambda p: r2_per_output(y_val, p), len(split.fit))
        pred = full.predict(yt[split.train], alpha, test_proj).cpu().numpy()
        out["linear"] = {"r2": r2_per_output(y[split.test], pred), "r2_global": r2_global(y[split.test], pred),
                         "r2_outputs": _r2_outputs(y[split.test], pred), "alpha": alpha}  # fmt: skip
    if mlp:
        yt = torch.as_tensor(y, device=dev)
        pred, info = mlp_fit_predict(
            xs[split.fit], yt[split.fit], xs[split.val], y[split.val], xs[split.test],
            n_classes=n_classes if discrete else None, seed=seed, epochs=mlp_epochs,
        )  # fmt: skip
        pred = pred.cpu().numpy()
        if discrete:
            out["mlp"] = {"balanced_accuracy": balanced_accuracy(y[split.test], pred),
                          "accuracy": float(np.mean(pred == y[split.test])), **info}  # fmt: skip
        else:
            out["mlp"] = {"r2": r2_per_output(y[split.test], pred), "r2_global": r2_global(y[split.test], pred),
                          "r2_outputs": _r2_outputs(y[split.test], pred), **info}  # fmt: skip
    return out


def _element_label(fam: Family, j: int) -> str:
    vals = fam.elements[j][1]
    return f"{fam.name}(" + ", ".join(f"{p}={v:g}" for p, v in zip(fam.params, vals, strict=True)) + ")"


def run_equivariance(
    encode: Callable[[torch.Tensor], torch.Tensor],
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
    """Every equivariance metric of METRICS.md (module docstring) for one encoder on uint8 N×H×W×C images.

    encode     -- float N×3×s×s batch in [0, 1] on `device` → features [N, D] (the caller adds resizing and
                  normalisation); called under torch.no_grad, batch_size images at a time.
    families   -- subset of FAMILY_NAMES (default: all).
    n_images   -- images used: sorted default_rng(seed).choice(N, n_images, replace=False) when N is larger.
    n_draws    -- random parameter draws per image in B (pairs = n_draws × images; every draw of an image
                  stays on the image's side of the split).
    mlp        -- also train the MLP heads (B); the linear heads always run. mlp_epochs: their epochs.
    """
    fam_names = list(FAMILY_NAMES if families is None else families)
    unknown = [f for f in fam_names if f not in FAMILIES]
    if unknown or not fam_names:
        raise ValueError(f"unknown families {unknown}; available: {list(FAMILY_NAMES)}")
    imgs = torch.as_tensor(images)
    if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 N x H x W x C with C in (1, 3), got {imgs.dtype} {tuple(imgs.shape)}")
    n_total = int(imgs.shape[0])
    if n_total < MIN_IMAGES:
        raise ValueError(f"the equivariance suite needs at least {MIN_IMAGES} images, got {n_total}")
    if batch_size < 1 or n_draws < 1 or mlp_epochs < 1:
        raise ValueError("batch_size, n_draws and mlp_epochs must be ≥ 1")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = None
    if n_total > n_images:
        rows = np.sort(np.random.default_rng(seed).choice(n_total, max(n_images, MIN_IMAGES), replace=False))
        imgs = imgs[torch.from_numpy(rows)]
    n = int(imgs.shape[0])
    imgs = imgs.to(dev)
    h, w = int(imgs.shape[1]), int(imgs.shape[2])
    side = min(h, w)
    pixel_scale = side / REFERENCE_SIZE
    split = make_split(n, seed)
    pair_split = split.repeat(n, n_draws)
    enc = _Encoder(encode, imgs, batch_size, pixel_scale)
    warnings: list[str] = []
    if h != w:
        warnings.append(f"images are {h}×{w}: every view is the centred {side}×{side} square crop")
    if n < 200:
        warnings.append(f"only {n} images ({len(split.test)} test): R², accuracies and MRR are noisy")

    base_cache: dict[str, torch.Tensor] = {}
    perm: torch.Tensor | None = None
    per_family: dict[str, dict[str, Any]] = {}
    total = len(fam_names)
    for i, name in enumerate(fam_names):
        fam = FAMILIES[name]
        frac0 = i / total
        progress(frac0, f"{name}: encoding views")
        key = fam.mask
        if key not in base_cache:
            base_cache[key] = enc.features(name, None)
        z0 = base_cache[key]
        if perm is None:
            g = torch.Generator().manual_seed(seed)
            perm = torch.argsort(torch.rand(n, z0.shape[1], generator=g), dim=1).to(dev)
        res: dict[str, Any] = {"kind": fam.kind}
        if fam.has_elements:
            zs = [enc.features(name, _element_params(fam, n, j)) for j in range(len(fam.elements))]
            res["invariance"] = invariance_curve(fam, z0, zs, perm)
            progress(frac0 + 0.4 / total, f"{name}: equivariance maps")
            res["structure"] = structure_scores(fam, z0, zs, split)
            del zs
        progress(frac0 + 0.6 / total, f"{name}: parameter prediction")
        params = sample_params(name, n * n_draws, family_rng(seed, name))  # row d·n + i: draw d of image i
        zt = torch.cat([enc.features(name, params[d * n : (d + 1) * n]) for d in range(n_draws)])
        y = targets(name, params)
        n_classes = len(fam.targets)
        x_pairs = torch.cat([z0.repeat(n_draws, 1), zt], dim=1)
        res["prediction"] = _heads(x_pairs, y, pair_split, discrete=fam.kind == "discrete",
                                   n_classes=n_classes, seed=seed, mlp=mlp, mlp_epochs=mlp_epochs)  # fmt: skip
        del x_pairs
        if name == "rot90":
            res["single_view"] = _heads(zt, y, pair_split, discrete=True, n_classes=4, seed=seed, mlp=mlp,
                                        mlp_epochs=mlp_epochs)  # fmt: skip
        per_family[name] = res
        del zt

    metrics = _metrics(per_family)
    figures = _figures(per_family, metrics)
    variant = _variant(fam_names, n_total, n, rows, split, seed, dev, batch_size, side, pixel_scale, mlp,
                       mlp_epochs, n_draws, enc.passes, per_family, int(base_cache["none" if "none" in base_cache
                                                                          else "disc"].shape[1]))  # fmt: skip
    progress(1.0, "done")
    return SuiteResult(metrics=metrics, figures=figures, variant=variant, warnings=warnings)


def _metrics(per_family: dict[str, dict[str, Any]]) -> dict[str, float]:
    m: dict[str, float] = {}
    for name, res in per_family.items():
        if "invariance" in res:
            m[f"invariance_auc_{name}"] = res["invariance"]["auc"]
            m[f"invariance_corrected_auc_{name}"] = res["invariance"]["corrected_auc"]
            m[f"invariance_normalized_auc_{name}"] = res["invariance"]["normalized_auc"]
        if "structure" in res:
            s = res["structure"]["summary"]
            m[f"relerr_{name}"] = s["relerr"]
            m[f"relerr_identity_{name}"] = s["relerr_identity"]
            m[f"mrr_{name}"] = s["mrr"]
            m[f"mrr_identity_{name}"] = s["mrr_identity"]
            for k in HIT_KS:
                m[f"hit{k}_{name}"] = s[f"hit{k}"]
        pred = res["prediction"]
        for head, r in pred.items():
            if res["kind"] == "discrete":
                m[f"balacc_{head}_{name}"] = r["balanced_accuracy"]
            else:
                m[f"r2_{head}_{name}"] = r["r2"]
                m[f"r2global_{head}_{name}"] = r["r2_global"]
        if "single_view" in res:
            sv = res["single_view"]
            m["rot4_single_view_acc"] = sv["linear"]["accuracy"]
            if "mlp" in sv:
                m["rot4_single_view_acc_mlp"] = sv["mlp"]["accuracy"]

    def mean_of(keys: list[str]) -> float | None:
        vals = [m[k] for k in keys if k in m and np.isfinite(m[k])]
        return float(np.mean(vals)) if vals else None

    names = list(per_family)
    summary = {
        "equi_r2_mean": mean_of([f"r2_mlp_{f}" for f in R2_SUMMARY_FAMILIES]) if all(
            f"r2_mlp_{f}" in m for f in R2_SUMMARY_FAMILIES) else None,
        "equi_r2_mean_linear": mean_of([f"r2_linear_{f}" for f in R2_SUMMARY_FAMILIES]) if all(
            f"r2_linear_{f}" in m for f in R2_SUMMARY_FAMILIES) else None,
        "invariance_auc_mean": mean_of([f"invariance_auc_{f}" for f in names]),
        "invariance_corrected_auc_mean": mean_of([f"invariance_corrected_auc_{f}" for f in names]),
        "invariance_normalized_auc_mean": mean_of([f"invariance_normalized_auc_{f}" for f in names]),
        "equi_mrr_mean": mean_of([f"mrr_{f}" for f in names]),
        "equi_mrr_identity_mean": mean_of([f"mrr_identity_{f}" for f in names]),
        "balacc_mean_linear": mean_of([f"balacc_linear_{f}" for f in names]),
        "balacc_mean_mlp": mean_of([f"balacc_mlp_{f}" for f in names]),
    }  # fmt: skip
    m.update({k: v for k, v in summary.items() if v is not None})
    return {k: float(v) for k, v in m.items() if np.isfinite(v)}


RADAR_AXES = (
    ("invariance_auc_mean", "invariance (AUC of mean cosine)"),
    ("invariance_normalized_auc_mean", "invariance, shuffle-corrected / its value at 0"),
    ("equi_r2_mean", "parameter R² (MLP, Wang et al. four)"),
    ("equi_r2_mean_linear", "parameter R² (linear)"),
    ("balacc_mean_linear", "discrete balanced accuracy (linear)"),
    ("rot4_single_view_acc", "4-way rotation, single view"),
    ("equi_mrr_mean", "equivariance-map MRR"),
)


def _figures(per_family: dict[str, dict[str, Any]], metrics: dict[str, float]) -> dict[str, Any]:
    inv = {
        name: {k: res["invariance"][k] for k in ("strength", "unit", "mean_cosine", "corrected", "normalized",
                                                  "per_element_cosine", "auc", "corrected_auc", "normalized_auc")}
        for name, res in per_family.items() if "invariance" in res
    }  # fmt: skip
    cont = [f for f, r in per_family.items() if r["kind"] == "continuous"]
    disc = [f for f, r in per_family.items() if r["kind"] == "discrete"]

    def get(fams: list[str], head: str, key: str) -> list[float | None]:
        out = []
        for f in fams:
            v = per_family[f]["prediction"].get(head, {}).get(key)
            out.append(None if v is None or not np.isfinite(v) else float(v))
        return out

    r2 = {"families": cont, "linear": get(cont, "linear", "r2"), "mlp": get(cont, "mlp", "r2"),
          "linear_global": get(cont, "linear", "r2_global"), "mlp_global": get(cont, "mlp", "r2_global"),
          "per_output": {f: {"targets": list(FAMILIES[f].targets),
                             **{h: r["r2_outputs"] for h, r in per_family[f]["prediction"].items()}}
                         for f in cont}}  # fmt: skip
    bal = {"families": disc, "linear": get(disc, "linear", "balanced_accuracy"),
           "mlp": get(disc, "mlp", "balanced_accuracy"),
           "chance": [1.0 / len(FAMILIES[f].targets) for f in disc]}  # fmt: skip
    structure = {name: {k: v for k, v in res["structure"].items() if k != "summary"}
                 for name, res in per_family.items() if "structure" in res}  # fmt: skip
    radar = {
        "axes": [{"key": k, "label": label, "value": metrics.get(k), "range": [0.0, 1.0]}
                 for k, label in RADAR_AXES if k in metrics]
    }  # fmt: skip
    return {"invariance": inv, "r2": r2, "balanced_accuracy": bal, "structure": structure, "radar": radar}


def _variant(fam_names, n_total, n, rows, split, seed, dev, batch_size, side, pixel_scale, mlp, mlp_epochs,
             n_draws, passes, per_family, dim) -> dict[str, Any]:  # fmt: skip
    fams = {}
    for name in fam_names:
        f = FAMILIES[name]
        pred = per_family[name]["prediction"]
        fams[name] = {
            "kind": f.kind,
            "params": list(f.params),
            "strength_unit": f.unit,
            "elements": [{"strength": s, "params": list(p)} for s, p in f.elements],
            "random": f.random,
            "targets": list(f.targets),
            "mask": f.mask,
            "ridge_alpha": pred["linear"]["alpha"],
            "mlp_best_epoch": pred.get("mlp", {}).get("best_epoch"),
        }
    return {
        "families": fams,
        "n_images_total": n_total,
        "n_images_used": n,
        "subsampled": rows is not None,
        "subsample": "sorted default_rng(seed).choice(N, n_images, replace=False)",
        "seed": seed,
        "split": {"train": len(split.train), "fit": len(split.fit), "val": len(split.val), "test": len(split.test),
                  "rule": "default_rng([seed, 1]).permutation: first 20 % test, then 20 % of train validation"},
        "params_rng": "numpy default_rng([seed, zlib.crc32(family name)]), n_draws × n rows, draw-major",
        "n_draws": n_draws,
        "pairs": {"train": len(split.train) * n_draws, "test": len(split.test) * n_draws},
        "shuffle_baseline": "one permutation of the D dims per image: argsort(torch.rand(n, D, Generator(seed)))",
        "image_side": side,
        "square_crop": "centre crop to min(H, W)",
        "pixel_scale": pixel_scale,
        "pixel_strengths": "translation and blur σ given at 32 px, multiplied by side / 32",
        "geometry": "affine_grid/grid_sample bilinear, align_corners=False, padding_mode=border",
        "masking": {"rotation": "inscribed disc on both views (0 outside)", "translation": "none: border "
                    "(edge-replicate) padding", "rot90/flips/scale": "none needed (no sample leaves the image)"},
        "colour": "torch RGB blends clamped to [0, 1]; hue in HSV; luma Rec. 601",
        "blur": f"separable Gaussian, radius ceil({BLUR_TRUNCATE:g}·σ_max), reflect padding",
        "ridge": "closed form with intercept on train-standardised features, float64; α = a·n_fit, "
                 f"a ∈ {list(RIDGE_ALPHAS_PER_SAMPLE)} picked on the validation part, refit on all train",
        "linear_classifier": "ridge on one-hot targets, argmax",
        "mlp": None if not mlp else {"hidden": list(MLP_HIDDEN), "activation": "ReLU",
                                     "architecture": "SIE deep-end head (eval_angle_prediction.py)",
                                     "epochs": mlp_epochs, "batch": MLP_BATCH, "lr": MLP_LR,
                                     "weight_decay": MLP_WEIGHT_DECAY, "optimizer": "AdamW (= Adam at weight decay 0)",
                                     "selection": "best validation epoch", "init": "torch.Generator(seed) on CPU"},
        "r2": {"r2": "mean over outputs (scikit-learn uniform_average)",
               "r2global": "SIE: 1 − RSS/TSS over all entries, TSS around the mean of all entries"},
        "retrieval": "cosine similarity to f(g'x) of the same image, identity included; ties = random order",
        "structure_relerr": "Σ‖f(gx) − M_g f(x)‖² / Σ‖f(gx) − test mean‖² over test images",
        "r2_summary_families": list(R2_SUMMARY_FAMILIES),
        "equi_r2_mean": "mean of r2_mlp over rotation, colour, blur, translation",
        "device": str(dev),
        "batch_size": batch_size,
        "encoder_passes": passes,
        "feature_dim": dim,
    }


# --- helpers ------------------------------------------------------------------------------------------


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _f64(a: Any) -> np.ndarray:
    return np.asarray(_np(a), dtype=np.float64)


def _r2_outputs(y: np.ndarray, pred: np.ndarray) -> list[float]:
    y, pred = y.reshape(len(y), -1), pred.reshape(len(y), -1)
    return [r2_per_output(y[:, j], pred[:, j]) for j in range(y.shape[1])]


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan
