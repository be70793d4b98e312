"""CTRL's frequency domain (Li et al., ICCV 2023): BT.601 YCrCb and the orthonormal 2-D DCT-II in blocks,
shared by the CTRL trigger (triggers.ctrl) and the pool scan's CTRL energy (image_scores.ctrl_energy).

Colour transform (CTRL's code uses OpenCV's COLOR_RGB2YCrCb, ITU-R BT.601 full range):
    Y = 0.299 R + 0.587 G + 0.114 B,  Cr = 0.713 (R − Y) + 128,  Cb = 0.564 (B − Y) + 128.
The inverse is the exact matrix inverse (OpenCV rounds its inverse coefficients and, in CTRL's code, rounds
YCrCb to uint8 in between); here everything stays float64, so without a trigger the round trip returns the
input exactly after the final rounding. Channel order Y, Cr, Cb as OpenCV: CTRL's `channel_list = [1, 2]`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# BT.601 full range, as OpenCV's RGB2YCrCb: [Y, Cr, Cb] = M · [R, G, B] + offset.
_KR, _KG, _KB = 0.299, 0.587, 0.114
_CR_SCALE, _CB_SCALE = 0.713, 0.564
YCRCB_MATRIX = np.array(
    [
        [_KR, _KG, _KB],
        [_CR_SCALE * (1 - _KR), -_CR_SCALE * _KG, -_CR_SCALE * _KB],
        [-_CB_SCALE * _KR, -_CB_SCALE * _KG, _CB_SCALE * (1 - _KB)],
    ]
)
YCRCB_OFFSET = np.array([0.0, 128.0, 128.0])
YCRCB_INVERSE = np.linalg.inv(YCRCB_MATRIX)


@lru_cache(maxsize=16)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n×n): C[k, i] = a_k cos(π (2i + 1) k / (2n)), a_0 = √(1/n), a_k = √(2/n).

    y = C x is ``scipy.fft.dct(x, norm="ortho")``; C is orthogonal, so the inverse is Cᵀ."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] = np.sqrt(1.0 / n)
    c.setflags(write=False)
    return c


def rgb_to_ycrcb(x: np.ndarray) -> np.ndarray:
    """Float RGB (…×3, 0–255 scale) to Y, Cr, Cb (BT.601 full range, OpenCV's order and constants)."""
    return x @ YCRCB_MATRIX.T + YCRCB_OFFSET


def ycrcb_to_rgb(y: np.ndarray) -> np.ndarray:
    """Exact inverse of ``rgb_to_ycrcb``."""
    return (y - YCRCB_OFFSET) @ YCRCB_INVERSE.T


def block_dct(x: np.ndarray, window: int) -> np.ndarray:
    """Orthonormal 2-D DCT-II of each non-overlapping window×window block over axes 1, 2 of N×H×W×C floats.

    Rows and columns past the last full block are left as they are (CTRL uses 32×32 images and whole blocks)."""
    return _block_transform(x, window, inverse=False)


def block_idct(x: np.ndarray, window: int) -> np.ndarray:
    """Inverse of ``block_dct``."""
    return _block_transform(x, window, inverse=True)


def _block_transform(x: np.ndarray, window: int, *, inverse: bool) -> np.ndarray:
    n, h, w, c = x.shape
    hb, wb = h // window, w // window
    out = np.array(x, dtype=np.float64, copy=True)
    if hb == 0 or wb == 0:
        return out
    m = dct_matrix(window)
    if inverse:
        m = m.T
    core = out[:, : hb * window, : wb * window].reshape(n, hb, window, wb, window, c)
    # Y = M X Mᵀ on each block (axes 2 and 4 are the in-block row and column)
    core = np.einsum("ai,nhiwjc,bj->nhawbc", m, core, m, optimize=True)
    out[:, : hb * window, : wb * window] = core.reshape(n, hb * window, wb * window, c)
    return out
