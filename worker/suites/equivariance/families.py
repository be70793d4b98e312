"""The transformation families: their parameters, fixed elements g (A, C), random draws (B) and B's targets.

Strengths and ranges are docs/METRICS.md's ("Equivariance suite"): the fixed transforms g of A and C, and the
random range of B:

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

Random parameters come from numpy generators seeded by (seed, family), so a family draws the same numbers
whichever other families run.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

FAMILY_NAMES = (
    "rotation", "rot90", "translation", "scale", "hflip", "vflip",
    "brightness", "contrast", "saturation", "hue", "colour", "grayscale", "blur",
)  # fmt: skip

Element = tuple[float, tuple[float, ...]]  # (strength, parameter row) of one fixed transform g


@dataclass(frozen=True)
class Family:
    """One transformation family. `elements` are the fixed transforms g (strength, parameter row) of A and C;
    B draws `random` parameters per image; `targets` name B's regression outputs or, for discrete families,
    its classes (the class is the first parameter, an integer)."""

    name: str
    kind: str  # "continuous" | "discrete"
    params: tuple[str, ...]
    unit: str
    elements: tuple[Element, ...]
    targets: tuple[str, ...]
    random: str
    mask: str = "none"  # "disc": both views multiplied by the inscribed disc

    @property
    def has_elements(self) -> bool:
        return bool(self.elements)


def _signed(strengths: Sequence[float], centre: float = 0.0) -> tuple[Element, ...]:
    return tuple((s, (centre + sign * s,)) for s in strengths for sign in (-1.0, 1.0))


def _translations() -> tuple[Element, ...]:
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


def element_params(fam: Family, n: int, j: int) -> np.ndarray:
    """The parameter row of fixed element j, repeated for n images: float64 [n, len(params)]."""
    return np.tile(np.asarray(fam.elements[j][1], dtype=np.float64), (n, 1))


def element_label(fam: Family, j: int) -> str:
    """'rotation(angle_deg=-5)': element j with its parameters."""
    vals = fam.elements[j][1]
    return f"{fam.name}(" + ", ".join(f"{p}={v:g}" for p, v in zip(fam.params, vals, strict=True)) + ")"
