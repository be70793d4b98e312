"""Trigger fidelity against the attacks' own code paths.

CTRL (Li et al., ICCV 2023): the reference follows CTRL's training path step by step — PoisonAgent's
``data.astype(float32) / 255``, then ``PoisonFre.Poison_Frequency_Diff`` with ``rgb2yuv=True``
(meet-cjli/CTRL @ e3d26f0, utils/frequency.py:394–439): ×255 → ``kornia.color.rgb_to_yuv`` → orthonormal 2-D
DCT per 32×32 block (here scipy.fft.dctn, norm="ortho", in place of CTRL's torch-dct copy) → +magnitude at
(w + 15, h + 15) and (w + 31, h + 31) of channels 1, 2 → inverse DCT → ``yuv_to_rgb`` → /255 → clamp [0, 1].
The installed kornia (≥ 0.9) inverts YUV exactly; CTRL pins kornia 0.6.5, whose ``yuv_to_rgb`` is the rounded
published inverse, transcribed below from kornia/color/yuv.py:126–134 at v0.6.5.

Grid: the third-party reproduction whose numbers the grid uses (chengyi-chris/UPure, datasets/cifar.py
``generate_trigger``), rebuilt here with its loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from worker.suites.backdoor import dct
from worker.suites.backdoor import image_scores as scores
from worker.suites.backdoor import triggers as trig

kornia = pytest.importorskip("kornia")

# kornia 0.6.5's yuv_to_rgb coefficients (R = Y + 1.14 V, G = Y − 0.396 U − 0.581 V, B = Y + 2.029 U).
KORNIA_065_UV_COLUMNS = {"R": (0.0, 1.14), "G": (-0.396, -0.581), "B": (2.029, 0.0)}


def kornia_065_yuv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """kornia 0.6.5's ``yuv_to_rgb``, as written there (image: *×3×H×W)."""
    y, u, v = image[..., 0, :, :], image[..., 1, :, :], image[..., 2, :, :]
    r = y + 1.14 * v
    g = y + -0.396 * u - 0.581 * v
    b = y + 2.029 * u
    return torch.stack([r, g, b], -3)


def ctrl_official(
    images: np.ndarray, magnitude: float = 100.0, dtype=torch.float64
) -> tuple[np.ndarray, np.ndarray]:
    """CTRL's Poison_Frequency_Diff on uint8 N×H×W×3 images: (float result ×255 before the clamp, the clamped
    result ×255 rounded to uint8)."""
    x = torch.tensor(images.astype(np.float64) / 255.0, dtype=dtype).permute(0, 3, 1, 2)  # PoisonAgent
    x = x * 255.0
    x = kornia.color.rgb_to_yuv(x)
    a = x.numpy().copy()  # float64, or float32 as CTRL
    window, positions = 32, [(15, 15), (31, 31)]  # --window_size 32 --trigger_position 15 31
    for w in range(0, a.shape[2], window):
        for h in range(0, a.shape[3], window):
            a[:, :, w : w + window, h : h + window] = scipy.fft.dctn(
                a[:, :, w : w + window, h : h + window], axes=(2, 3), norm="ortho"
            )
    for ch in (1, 2):  # --channel 1 2
        for w in range(0, a.shape[2], window):
            for h in range(0, a.shape[3], window):
                for pr, pc in positions:
                    a[:, ch, w + pr, h + pc] += magnitude
    for w in range(0, a.shape[2], window):
        for h in range(0, a.shape[3], window):
            a[:, :, w : w + window, h : h + window] = scipy.fft.idctn(
                a[:, :, w : w + window, h : h + window], axes=(2, 3), norm="ortho"
            )
    x = kornia_065_yuv_to_rgb(torch.tensor(a, dtype=dtype))
    x = x / 255.0
    raw = (x * 255.0).permute(0, 2, 3, 1).numpy().astype(np.float64)
    x = torch.clamp(x, min=0.0, max=1.0)
    out = np.rint(x.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255.0).astype(np.uint8)
    return raw, out


def rng_images(n: int, size: int, seed: int, lo: int = 0, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, (n, size, size, 3), dtype=np.uint8)


def test_yuv_matrices_are_kornias():
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 5, 7))
    ref = kornia.color.rgb_to_yuv(torch.tensor(x)).numpy()
    assert np.allclose(np.moveaxis(dct.rgb_to_yuv(np.moveaxis(x, 1, -1)), -1, 1), ref, atol=1e-12)
    # linear, no offset: the same on the 0–255 scale CTRL converts at
    assert np.allclose(dct.rgb_to_yuv(255 * np.moveaxis(x, 1, -1)), 255 * np.moveaxis(ref, 1, -1), atol=1e-9)
    y = torch.tensor(np.random.default_rng(1).uniform(-0.5, 1, (2, 3, 5, 7)))
    got = np.moveaxis(dct.yuv_to_rgb(np.moveaxis(y.numpy(), 1, -1)), -1, 1)
    assert np.allclose(got, kornia_065_yuv_to_rgb(y).numpy(), atol=1e-12)  # CTRL's kornia 0.6.5
    exact = np.moveaxis(dct.yuv_to_rgb(np.moveaxis(y.numpy(), 1, -1), exact=True), -1, 1)
    if tuple(int(p) for p in kornia.__version__.split(".")[:2]) >= (0, 9):
        assert np.allclose(exact, kornia.color.yuv_to_rgb(y).numpy(), atol=1e-12)
    else:
        assert np.allclose(got, kornia.color.yuv_to_rgb(y).numpy(), atol=1e-12)
    # the 0.6.5 inverse is the published rounded one: its round trip moves a pixel by at most 0.35 grey levels
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=np.float64)
    shift = np.abs(dct.yuv_to_rgb(dct.rgb_to_yuv(corners)) - corners).max()
    assert 0.3 < shift < 0.35


@pytest.mark.parametrize("size", [32, 64])
def test_ctrl_equals_official_path(size):
    x = rng_images(6, size, seed=size)
    raw, ref = ctrl_official(x)
    assert np.allclose(trig.ctrl_unrounded(x), raw, atol=1e-9)
    assert np.array_equal(trig.ctrl(x), ref)
    # CTRL itself runs in float32: ≤ 1 grey level from the float64 path after rounding, and rarely
    _, ref32 = ctrl_official(x, dtype=torch.float32)
    diff = np.abs(trig.ctrl(x).astype(int) - ref32)
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
    assert np.array_equal(trig.ctrl(x, magnitude=0.0), x)  # the 0.35-level round-trip shift rounds away


def test_ctrl_published_recipe_numbers():
    # README's CIFAR-10 command: --channel 1 2 --trigger_position 15 31 --magnitude 100.0 --window_size 32
    assert trig.CTRL_WINDOW == 32 and trig.CTRL_POSITIONS == ((15, 15), (31, 31))
    assert trig.CTRL_MAGNITUDE == 100.0 and trig.CTRL_CHANNELS == (1, 2)
    grey = np.full((1, 32, 32, 3), 128, dtype=np.uint8)  # no clipping: the stamp stays within ±22 levels
    stamp = trig.ctrl_unrounded(grey) - 128.0
    # the kornia YUV coefficients of the stamped image: +100 at the two positions of U and V (up to the
    # rounded inverse's ≤ 0.2 % cross-talk), nothing elsewhere
    coef = scipy.fft.dctn(dct.rgb_to_yuv(stamp)[0], axes=(0, 1), norm="ortho")
    at = np.zeros((32, 32), bool)
    at[15, 15] = at[31, 31] = True
    assert np.allclose(coef[at][:, 1:], 100.0, atol=0.2) and np.abs(coef[at][:, 0]).max() < 0.2
    assert np.abs(coef[~at]).max() < 1e-9
    # per-channel RGB energy: U and V carry the same pattern p, ‖p‖² = 2 · 100² (orthonormal DCT), so channel c
    # gets (M⁻¹[c, U] + M⁻¹[c, V])² · 2 · 100² with kornia 0.6.5's M⁻¹
    expect = np.array([sum(KORNIA_065_UV_COLUMNS[c]) ** 2 * 2 * 100.0**2 for c in "RGB"])
    assert np.allclose((stamp**2).sum(axis=(0, 1, 2)), expect, rtol=1e-9)  # 25 992, 19 091, 82 337
    # after rounding to uint8 each pixel moves ≤ 0.5, so each channel's RGB norm moves ≤ 0.5 · √(32 · 32)
    rounded = ((trig.ctrl(grey).astype(float) - 128.0) ** 2).sum(axis=(0, 1, 2))
    assert np.all(np.abs(np.sqrt(rounded) - np.sqrt(expect)) <= 0.5 * 32)
    # the pool scan's CTRL energy reads the same coefficients: ≈ 100² on a flat image
    assert scores.ctrl_energy(trig.ctrl(grey))[0] == pytest.approx(100.0**2, rel=0.01)
    assert scores.ctrl_energy(grey)[0] == pytest.approx(0.0, abs=1e-9)


def test_ctrl_energy_matches_kornia_scipy_reference():
    x = rng_images(5, 64, seed=3)
    yuv = kornia.color.rgb_to_yuv(torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2)).numpy()
    vals = []
    for r0 in (0, 32):
        for c0 in (0, 32):
            blk = scipy.fft.dctn(yuv[:, 1:, r0 : r0 + 32, c0 : c0 + 32], axes=(2, 3), norm="ortho")
            vals += [blk[:, :, 15, 15], blk[:, :, 31, 31]]
    ref = np.mean(np.concatenate(vals, axis=1) ** 2, axis=1)
    assert np.allclose(scores.ctrl_energy(x), ref, rtol=1e-10)


def test_ctrl_control_has_the_triggers_rgb_energy():
    grey = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    trigger = trig.ctrl_unrounded(grey) - 128.0
    control = trig.ctrl_unrounded(grey, trig.CTRL_CONTROL_MAGNITUDE, trig.CTRL_CONTROL_CHANNELS) - 128.0
    assert (control**2).sum() == pytest.approx((trigger**2).sum(), rel=1e-9)
    assert trig.CTRL_CONTROL_MAGNITUDE == pytest.approx(100.0 * np.sqrt((1.14**2 + 0.977**2 + 2.029**2) / 3))
    # luma only: the same change in R, G and B, at the trigger's frequencies in Y
    assert np.allclose(control[..., 0], control[..., 1]) and np.allclose(control[..., 0], control[..., 2])
    coef = scipy.fft.dctn(control[0], axes=(0, 1), norm="ortho")[..., 0]
    assert coef[15, 15] == pytest.approx(trig.CTRL_CONTROL_MAGNITUDE) == pytest.approx(coef[31, 31])
    assert np.abs(coef).sum() == pytest.approx(2 * trig.CTRL_CONTROL_MAGNITUDE)
    # after rounding, and on images far enough from 0 and 255 not to clip
    x = rng_images(8, 32, seed=4, lo=40, hi=216)
    e_trig = ((trig.ctrl(x).astype(float) - x) ** 2).sum()
    e_ctrl = ((trig.ctrl_control(x).astype(float) - x) ** 2).sum()
    assert e_ctrl == pytest.approx(e_trig, rel=0.02)


def upure_generate_trigger(img_size: int = 32) -> np.ndarray:
    """chengyi-chris/UPure datasets/cifar.py generate_trigger, "Trigger A"."""
    img = np.zeros((img_size, img_size, 3), dtype=np.uint8)
    intensity, pixel_width, pixel_gap = 30, 1, 1
    for i in range(0, img_size, pixel_gap + pixel_width):
        for j in range(0, img_size, pixel_gap + pixel_width):
            img[i : i + pixel_width, j : j + pixel_width] = intensity
    return img


@pytest.mark.parametrize("size", [32, 96])  # UPure's CIFAR and STL-10 sizes: the grid does not scale
def test_grid_matches_upure_reproduction(size):
    x = rng_images(3, size, seed=5)
    pattern = upure_generate_trigger(size).astype(np.int16)
    # saturating in int16, unlike UPure's wrapping uint8 sum
    ref = np.clip(x.astype(np.int16) + pattern, 0, 255).astype(np.uint8)
    assert np.array_equal(trig.grid(x), ref)
    low = x < 226  # where UPure's wrapping uint8 sum agrees
    assert np.array_equal(trig.grid(x)[low], (x + upure_generate_trigger(size))[low])
