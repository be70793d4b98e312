"""Trigger library of the backdoor suite: the stamps of published attacks on self-supervised encoders, and
the control stamps of equal energy that the collapse scores are compared against.

Every trigger maps uint8 images N×H×W×C (the dataset format) to uint8 images of the same shape; arithmetic is
float64 (int16 for the grid), rounded half-to-even and clipped to 0..255 once at the end. Recipes follow the
attacks' code as summarised in docs/METRICS.md, "Backdoor suite"; sizes are given at 32×32 and scaled with
the image size where a recipe has a size.

  badencoder  BadEncoder (Jia, Liu & Gong, IEEE S&P 2022; code `trigger_pt_white_21_10_ap_replace.npz`):
              a white square, 10×10 at rows/cols 21–30 (0-based, inclusive) of a 32×32 image.
  ssl_patch   SSL-Backdoor (Saha et al., "Backdoor Attacks on Self-Supervised Learning", CVPR 2022): an
              opaque patch ≈ 22 % of the width, pasted at a random position inside [0.10, 0.90] of the image
              (the range of their test-time poisons). The attack pastes HTBA's trigger PNGs, which are not
              shipped here; a fixed 4×4 grid of random colours (seed SSL_PATTERN_SEED) upsampled to the patch
              size stands in for them.
  ctrl        CTRL (Li et al., "An Embarrassingly Simple Backdoor Attack on Self-supervised Learning",
              ICCV 2023; code meet-cjli/CTRL, utils/frequency.py PoisonFre.Poison_Frequency_Diff with
              rgb2yuv=True as main_train.py builds it): ×255 → YUV (kornia.color.rgb_to_yuv) → orthonormal
              2-D DCT-II in 32×32 blocks → +100 at (15, 15) and (31, 31) of U and V (channels 1, 2) → inverse
              DCT → RGB (kornia 0.6.5's yuv_to_rgb) → /255 → clamp to [0, 1]. The colour transforms are in
              dct.py. CTRL keeps the result as float32; here it is rounded to uint8 (≤ 0.5 grey level).
  grid        Our recipe, after the repetitive trigger of Shejwalkar et al., "The Perils of Learning From
              Unlabeled Data" (ICCV 2023), who publish no code: +30 (0–255 scale) on every other pixel in both
              axes (rows 0, 2, 4 … × cols 0, 2, 4 …), all channels, int16, clip. The numbers are those of the
              third-party reproduction in UPure (Lee et al., WACV 2025; chengyi-chris/UPure datasets/cifar.py
              generate_trigger: intensity 30, pixel_width 1, pixel_gap 1, "Trigger A"); they were not checked
              against Shejwalkar et al.'s paper. UPure adds in uint8, which wraps past 255 before its clip;
              here the sum saturates at 255.
  blend       Blended injection (Chen et al. 2017, arXiv 1712.05526): x′ = (1 − 0.1)·x + 0.1·noise with a
              fixed uniform-noise image (seed BLEND_SEED).

Control stamps (same footprint and the same expected energy, none of the trigger's specific structure), so
that "triggered embeddings gather" can be separated from "any strong stamp moves embeddings together":

  badencoder → random_patch   the same box filled with random {0, 255} per pixel and channel (seed CONTROL_SEED).
                              For any pixel distribution symmetric about 127.5, E[(255 − x)²] = E[(b − x)²]
                              with b uniform on {0, 255}: the same expected squared change as the white square.
  ssl_patch  → ssl_control    the same positions and size, another 4×4 random-colour pattern (seed CONTROL_SEED).
  ctrl       → ctrl_control   the same DCT positions of the luma channel Y instead of U and V, with the
                              magnitude scaled so the RGB-space energy is the same before clipping: the trigger
                              puts the same spatial pattern p on U and V, so RGB changes by (M⁻¹[:, 1] +
                              M⁻¹[:, 2])·p, energy ‖M⁻¹[:, 1] + M⁻¹[:, 2]‖²·‖p‖² (M⁻¹ = dct.YUV_INVERSE; the DCT
                              is orthonormal); luma adds ‖M⁻¹[:, 0]‖² = 3 per unit. Same frequencies, same
                              energy, not the chroma pattern the attack plants.
  grid       → grid_shifted   the grid moved by one pixel in both axes (rows/cols 1, 3, 5 …): same energy.
  blend      → blend_control  the same α with another noise image (seed CONTROL_SEED): same expected energy.

CTRL's colour transform (kornia's YUV) and block DCT are in dct.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .dct import YUV_INVERSE, block_dct, block_idct, rgb_to_yuv, yuv_to_rgb
from .dct import dct_matrix as dct_matrix  # re-exported: triggers.dct_matrix

# --- protocol constants -------------------------------------------------------------------------------

REFERENCE_SIZE = 32  # the recipes' sizes below are for 32×32 images; other sizes scale linearly
# BadEncoder: white square at rows/cols 21..30 (start 21, size 10) on 32×32.
BADENCODER_START = 21
BADENCODER_SIZE = 10
BADENCODER_VALUE = 255
# SSL-Backdoor: patch side ≈ 22 % of the width (50 px at 224 in the paper's code), inside [0.10, 0.90].
SSL_PATCH_FRACTION = 0.22
SSL_PATCH_RANGE = (0.10, 0.90)
SSL_PATTERN_CELLS = 4  # the stand-in pattern: 4×4 cells of random colour
SSL_PATTERN_SEED = 1
# CTRL (Li et al. 2023): the README's CIFAR-10 command, --window_size 32 --trigger_position 15 31
# (PoisonFre pairs each with itself) --magnitude 100.0 --channel 1 2.
CTRL_WINDOW = 32
CTRL_POSITIONS = ((15, 15), (31, 31))
CTRL_MAGNITUDE = 100.0
CTRL_CHANNELS = (1, 2)  # U, V in kornia's Y, U, V order
CTRL_CONTROL_CHANNELS = (0,)  # luma: the control stamp
# Grid: our recipe (module docstring), the numbers of UPure's reproduction of Shejwalkar et al. 2023.
GRID_DELTA = 30
# Blend (Chen et al. 2017).
BLEND_ALPHA = 0.1
BLEND_SEED = 2
# Controls.
CONTROL_SEED = 12_345


def _stamp_gain(channels: tuple[int, ...]) -> float:
    """RGB energy per unit of energy of a spatial pattern added to all of `channels` of YUV: ‖Σ_k M⁻¹[:, k]‖²."""
    col = YUV_INVERSE[:, list(channels)].sum(axis=1)
    return float(col @ col)


# Luma magnitude of CTRL's control stamp with the RGB energy of +100 on U and V (≈ 145.7 = 100·√(6.371 / 3)).
CTRL_CONTROL_MAGNITUDE = CTRL_MAGNITUDE * float(
    np.sqrt(_stamp_gain(CTRL_CHANNELS) / _stamp_gain(CTRL_CONTROL_CHANNELS))
)


# --- sizes --------------------------------------------------------------------------------------------


def scaled(value: float, size: int) -> int:
    """A length given at 32 px, scaled to `size` px and rounded (at least 1)."""
    return max(1, int(round(value * size / REFERENCE_SIZE)))


def badencoder_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive, of BadEncoder's square: rows/cols 21:31 at 32×32, scaled."""
    r0, c0 = scaled(BADENCODER_START, height), scaled(BADENCODER_START, width)
    rs, cs = scaled(BADENCODER_SIZE, height), scaled(BADENCODER_SIZE, width)
    return r0, min(height, r0 + rs), c0, min(width, c0 + cs)


def ssl_patch_size(height: int, width: int) -> int:
    """Side of SSL-Backdoor's square patch: round(0.22 · min(H, W)), at least 1."""
    return max(1, int(round(SSL_PATCH_FRACTION * min(height, width))))


def ssl_patch_positions(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, 2) top-left corners (row, col), uniform over the integer positions that keep the whole patch
    inside [0.10, 0.90] of the image in both axes (default_rng(seed)); the full image if that is too small."""
    s = ssl_patch_size(height, width)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 2), dtype=np.int64)
    for axis, size in enumerate((height, width)):
        lo = int(round(SSL_PATCH_RANGE[0] * size))
        hi = int(round(SSL_PATCH_RANGE[1] * size)) - s  # inclusive upper start
        if hi < lo:
            lo, hi = 0, max(0, size - s)
        out[:, axis] = rng.integers(lo, hi + 1, n)
    return out


def _random_cells(size: int, channels: int, seed: int) -> np.ndarray:
    """A size×size×C uint8 pattern of SSL_PATTERN_CELLS² random colours (nearest-neighbour upsampled)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (SSL_PATTERN_CELLS, SSL_PATTERN_CELLS, channels), dtype=np.uint8)
    idx = np.minimum(np.arange(size) * SSL_PATTERN_CELLS // size, SSL_PATTERN_CELLS - 1)
    return cells[idx][:, idx]


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"triggers take uint8 N×H×W×C images with C in (1, 3), got {images.dtype} {images.shape}"
        )
    return images


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- patch triggers -----------------------------------------------------------------------------------


def badencoder_patch(images: np.ndarray, seed: int = 0) -> np.ndarray:  # noqa: ARG001 (fixed trigger)
    """BadEncoder's trigger: the box of ``badencoder_box`` set to 255 in every channel."""
    out = _check(images).copy()
    r0, r1, c0, c1 = badencoder_box(*out.shape[1:3])
    out[:, r0:r1, c0:c1, :] = BADENCODER_VALUE
    return out


def random_patch_control(images: np.ndarray, seed: int = 0) -> np.ndarray:  # noqa: ARG001
    """Control for ``badencoder_patch``: the same box filled with a fixed random {0, 255} pattern per pixel
    and channel (default_rng(CONTROL_SEED)); same expected squared change (module docstring)."""
    out = _check(images).copy()
    r0, r1, c0, c1 = badencoder_box(*out.shape[1:3])
    rng = np.random.default_rng(CONTROL_SEED)
    out[:, r0:r1, c0:c1, :] = rng.integers(0, 2, (r1 - r0, c1 - c0, out.shape[3]), dtype=np.uint8) * 255
    return out


def _paste(images: np.ndarray, pattern: np.ndarray, positions: np.ndarray) -> np.ndarray:
    out = images.copy()
    s = pattern.shape[0]
    for i, (r, c) in enumerate(positions):
        out[i, r : r + s, c : c + s, :] = pattern[: out.shape[1] - r, : out.shape[2] - c]
    return out


def ssl_patch(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """SSL-Backdoor-style patch: the stand-in pattern (seed SSL_PATTERN_SEED) pasted at
    ``ssl_patch_positions(N, H, W, seed)``."""
    images = _check(images)
    n, h, w, c = images.shape
    s = ssl_patch_size(h, w)
    return _paste(images, _random_cells(s, c, SSL_PATTERN_SEED), ssl_patch_positions(n, h, w, seed))


def ssl_patch_control(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Control for ``ssl_patch``: another random-colour pattern (seed CONTROL_SEED) at the same positions."""
    images = _check(images)
    n, h, w, c = images.shape
    s = ssl_patch_size(h, w)
    return _paste(images, _random_cells(s, c, CONTROL_SEED), ssl_patch_positions(n, h, w, seed))


# --- CTRL: +magnitude in the block DCT of YUV (dct.py) ------------------------------------------------


def ctrl_window(height: int, width: int) -> int:
    """DCT block side: CTRL's 32, or min(H, W) for images smaller than that."""
    return min(CTRL_WINDOW, height, width)


def ctrl_positions(window: int) -> tuple[tuple[int, int], ...]:
    """CTRL's (15, 15) and (31, 31) in a 32-block; in a smaller block the same relative frequencies
    ((p + 1)·window/32 − 1, i.e. the middle and the highest frequency)."""
    if window == CTRL_WINDOW:
        return CTRL_POSITIONS
    return tuple(
        (max(0, round((r + 1) * window / CTRL_WINDOW) - 1), max(0, round((c + 1) * window / CTRL_WINDOW) - 1))
        for r, c in CTRL_POSITIONS
    )


def ctrl_unrounded(
    images: np.ndarray, magnitude: float = CTRL_MAGNITUDE, channels: tuple[int, ...] = CTRL_CHANNELS
) -> np.ndarray:
    """CTRL's stamp before the clamp, float64 RGB on the 0–255 scale: YUV → block DCT → +magnitude at
    ``ctrl_positions`` of `channels` in every full block → inverse DCT → RGB (CTRL's Poison_Frequency_Diff
    without its ×255 and /255)."""
    images = _check(images)
    if images.shape[-1] != 3:
        raise ValueError("CTRL works in YUV and needs RGB images (C = 3)")
    h, w = images.shape[1:3]
    window = ctrl_window(h, w)
    coef = block_dct(rgb_to_yuv(images.astype(np.float64)), window)
    for r0 in range(0, (h // window) * window, window):
        for c0 in range(0, (w // window) * window, window):
            for pr, pc in ctrl_positions(window):
                coef[:, r0 + pr, c0 + pc, list(channels)] += magnitude
    return yuv_to_rgb(block_idct(coef, window))


def ctrl(images: np.ndarray, seed: int = 0, magnitude: float = CTRL_MAGNITUDE) -> np.ndarray:  # noqa: ARG001
    """CTRL's frequency trigger (module docstring): +magnitude at CTRL_POSITIONS of U and V in every block,
    clamped and rounded to uint8."""
    return _to_uint8(ctrl_unrounded(images, magnitude, CTRL_CHANNELS))


def ctrl_control(images: np.ndarray, seed: int = 0) -> np.ndarray:  # noqa: ARG001
    """Control for ``ctrl``: the stamp on the luma channel only, CTRL_CONTROL_MAGNITUDE so the RGB energy is
    the trigger's (same frequencies, same energy)."""
    return _to_uint8(ctrl_unrounded(images, CTRL_CONTROL_MAGNITUDE, CTRL_CONTROL_CHANNELS))


# --- grid and blend -----------------------------------------------------------------------------------


def grid(images: np.ndarray, seed: int = 0, offset: int = 0) -> np.ndarray:  # noqa: ARG001
    """The grid (our recipe after Shejwalkar et al.; numbers from UPure's reproduction, module docstring): +30 at
    rows offset, offset+2, … × cols offset, offset+2, …, int16, clipped."""
    x = _check(images).astype(np.int16)
    x[:, offset::2, offset::2, :] += GRID_DELTA
    return np.clip(x, 0, 255).astype(np.uint8)


def grid_shifted(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Control for ``grid``: the grid moved by one pixel in both axes."""
    return grid(images, seed, offset=1)


def noise_image(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A fixed uniform uint8 noise image (default_rng(seed)) of the requested size."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _blend(images: np.ndarray, seed: int, alpha: float = BLEND_ALPHA) -> np.ndarray:
    images = _check(images)
    noise = noise_image(*images.shape[1:], seed=seed).astype(np.float64)
    return _to_uint8((1.0 - alpha) * images.astype(np.float64) + alpha * noise)


def blend(images: np.ndarray, seed: int = 0) -> np.ndarray:  # noqa: ARG001
    """Blended injection: (1 − 0.1)·x + 0.1·noise, noise = noise_image(seed=BLEND_SEED)."""
    return _blend(images, BLEND_SEED)


def blend_control(images: np.ndarray, seed: int = 0) -> np.ndarray:  # noqa: ARG001
    """Control for ``blend``: the same α with noise_image(seed=CONTROL_SEED)."""
    return _blend(images, CONTROL_SEED)


# --- registry -----------------------------------------------------------------------------------------

StampFn = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Trigger:
    """A trigger of the library and its control stamp. ``apply(images, seed)``: uint8 NHWC → uint8 NHWC
    (the seed matters only for triggers with random positions)."""

    name: str
    apply: StampFn
    control: StampFn
    control_name: str
    needs_rgb: bool
    source: str


TRIGGERS: dict[str, Trigger] = {
    "badencoder": Trigger("badencoder", badencoder_patch, random_patch_control, "random_patch", False,
                          "BadEncoder (Jia et al., IEEE S&P 2022; trigger_pt_white_21_10_ap_replace.npz): "
                          "white 10×10 at rows/cols 21–30 of 32×32"),
    "ssl_patch": Trigger("ssl_patch", ssl_patch, ssl_patch_control, "ssl_control", False,
                         "SSL-Backdoor (Saha et al., CVPR 2022): 22 % patch at a random place in [0.1, 0.9]; "
                         "our random-colour stand-in for HTBA's trigger images"),
    "ctrl": Trigger("ctrl", ctrl, ctrl_control, "ctrl_luma", True,
                    "CTRL (Li et al., ICCV 2023; official code, kornia YUV): +100 at DCT (15,15),(31,31) of U, V "
                    "in 32×32 blocks"),
    "grid": Trigger("grid", grid, grid_shifted, "grid_shifted", False,
                    "our recipe after Shejwalkar et al., ICCV 2023 (no code published; numbers from UPure's "
                    "reproduction, Lee et al., WACV 2025): +30 on every other pixel in both axes"),
    "blend": Trigger("blend", blend, blend_control, "blend_other_noise", False,
                     "Chen et al. 2017: α = 0.1 blend with a fixed noise image"),
}  # fmt: skip


def get_trigger(name: str) -> Trigger:
    if name not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}; available: {sorted(TRIGGERS)}")
    return TRIGGERS[name]
