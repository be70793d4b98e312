"""CTRL's frequency domain (Li et al., ICCV 2023): YUV and the orthonormal 2-D DCT-II in blocks, shared by the
CTRL trigger (triggers.ctrl) and the pool scan's CTRL energy (image_scores.ctrl_energy).

Colour transform: CTRL's training path, ``PoisonFre(..., rgb2yuv=True)`` (CTRL's main_train.py:157), converts with
``kornia.color.rgb_to_yuv`` / ``yuv_to_rgb`` (utils/frequency.py:275–289, meet-cjli/CTRL @ e3d26f0), kornia pinned
at 0.6.5 in its requirements.txt. kornia's YUV is BT.470 M/PAL, linear, no offset (U, V centred at 0), so it
gives the same result on 0–255 as on 0–1 (CTRL converts after ×255):

    Y = 0.299 R + 0.587 G + 0.114 B,  U = −0.147 R − 0.289 G + 0.436 B,  V = 0.615 R − 0.515 G − 0.100 B.

The inverse is kornia ≤ 0.8's (0.6.5 included) published, rounded one, the one CTRL ran:

    R = Y + 1.14 V,  G = Y − 0.396 U − 0.581 V,  B = Y + 2.029 U.

It is not the exact inverse of the forward matrix: the round trip alone moves a pixel by ≤ 0.35 grey levels (as in
CTRL's poisoned images). kornia 0.9 replaced it by the exact matrix inverse (YUV_INVERSE_EXACT here); the two
give CTRL outputs ≤ 1 grey level apart after rounding. Channel order Y, U, V: CTRL's ``--channel 1 2`` is U, V.

(CTRL's utils/image.py also holds an OpenCV YCrCb variant, ``poison_frequency``; main_train.py never calls it.)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# kornia.color.rgb_to_yuv (the same kernel in kornia 0.6.5 … 0.9): [Y, U, V] = YUV_MATRIX · [R, G, B].
YUV_MATRIX = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.147, -0.289, 0.436],
        [0.615, -0.515, -0.100],
    ]
)
# kornia.color.yuv_to_rgb of kornia 0.6.5 (CTRL's requirements.txt; kornia/color/yuv.py:130–132 at v0.6.5):
# [R, G, B] = YUV_INVERSE · [Y, U, V].
YUV_INVERSE = np.array(
    [
        [1.0, 0.0, 1.14],
        [1.0, -0.396, -0.581],
        [1.0, 2.029, 0.0],
    ]
)
YUV_INVERSE_EXACT = np.linalg.inv(YUV_MATRIX)  # kornia ≥ 0.9's yuv_to_rgb
for _m in (YUV_MATRIX, YUV_INVERSE, YUV_INVERSE_EXACT):
    _m.setflags(write=False)


@lru_cache(maxsize=16)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n×n): C[k, i] = a_k cos(π (2i + 1) k / (2n)), a_0 = √(1/n), a_k = √(2/n).

    y = C x is ``scipy.fft.dct(x, norm="ortho")`` and CTRL's ``dct(x, norm='ortho')`` (torch-dct); C is
    orthogonal, so the inverse is Cᵀ."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] = np.sqrt(1.0 / n)
    c.setflags(write=False)
    return c


def rgb_to_yuv(x: np.ndarray) -> np.ndarray:
    """Float RGB (…×3, any scale) to Y, U, V: ``kornia.color.rgb_to_yuv`` on the last axis."""
    return x @ YUV_MATRIX.T


def yuv_to_rgb(y: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Y, U, V (…×3) to RGB: kornia 0.6.5's ``yuv_to_rgb`` (CTRL's), or with ``exact`` the matrix inverse of
    ``rgb_to_yuv`` (kornia ≥ 0.9)."""
    return y @ (YUV_INVERSE_EXACT if exact else YUV_INVERSE).T


def block_dct(x: np.ndarray, window: int) -> np.ndarray:
    """Orthonormal 2-D DCT-II of each non-overlapping window×window block over axes 1, 2 of N×H×W×C floats.

    Rows and columns past the last full block are left as they are (CTRL's code needs H and W to be multiples of
    the window: its trigger loop indexes past the image otherwise)."""
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
