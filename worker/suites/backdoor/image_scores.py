"""Image-level scores of the pool scan: the frequency energy that CTRL (Li et al., ICCV 2023) plants, and the
Nyquist energy of the every-other-pixel grid (Shejwalkar et al., ICCV 2023). Both read the pixels only."""

from __future__ import annotations

import numpy as np

from . import triggers as trig
from .dct import block_dct, rgb_to_yuv

IMAGE_CHUNK = 512  # images per chunk of the image-level scores


def ctrl_energy(images: np.ndarray) -> np.ndarray:
    """CTRL frequency energy per image: mean over full 32×32 blocks, U and V and CTRL's two positions of the
    squared orthonormal DCT coefficient of kornia's YUV (0–255 scale, dct.rgb_to_yuv); the transform the
    trigger uses (triggers.ctrl), so a CTRL-stamped image carries (≈ 100 + natural)² there (off by the
    trigger's rounded inverse and the uint8 rounding only). RGB only."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("CTRL energy needs RGB N×H×W×3 images")
    h, w = images.shape[1:3]
    win = trig.ctrl_window(h, w)
    pos = trig.ctrl_positions(win)
    out = np.empty(len(images))
    for a in range(0, len(images), IMAGE_CHUNK):
        coef = block_dct(rgb_to_yuv(images[a : a + IMAGE_CHUNK].astype(np.float64)), win)
        vals = [coef[:, r0 + pr, c0 + pc, list(trig.CTRL_CHANNELS)]
                for r0 in range(0, (h // win) * win, win) for c0 in range(0, (w // win) * win, win)
                for pr, pc in pos]  # fmt: skip
        out[a : a + IMAGE_CHUNK] = np.mean(np.stack(vals, axis=1) ** 2, axis=(1, 2))
    return out


def grid_nyquist_energy(images: np.ndarray) -> np.ndarray:
    """Grid Nyquist energy per image: with X_c the 2-D DFT of channel c (0–255 scale),

        E = mean_c (|X_c(H/2, 0)|² + |X_c(0, W/2)|² + |X_c(H/2, W/2)|²) / (H·W),

    i.e. the orthonormal-DFT energy at the three Nyquist bins, where the every-other-pixel grid puts its
    energy. The bins are Σ x·(−1)^i, Σ x·(−1)^j and Σ x·(−1)^(i+j) (for odd sizes: the nearest frequency)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError("grid energy needs N×H×W×C images")
    h, w = images.shape[1:3]
    si = np.where(np.arange(h) % 2 == 0, 1.0, -1.0)
    sj = np.where(np.arange(w) % 2 == 0, 1.0, -1.0)
    out = np.empty(len(images))
    for a in range(0, len(images), IMAGE_CHUNK):
        x = images[a : a + IMAGE_CHUNK].astype(np.float64)
        rows = np.einsum("nijc,i->njc", x, si)  # Σ_i x (−1)^i, per column
        cols = x.sum(axis=1)
        e = (
            rows.sum(axis=1) ** 2
            + np.einsum("njc,j->nc", cols, sj) ** 2
            + np.einsum("njc,j->nc", rows, sj) ** 2
        )
        out[a : a + IMAGE_CHUNK] = e.mean(axis=1) / (h * w)
    return out
