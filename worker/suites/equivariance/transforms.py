"""The transformations T(x), batched on the device in plain torch: float N×3×H×W images in [0, 1], one
parameter row per image.

Geometry: affine_grid / grid_sample, bilinear, align_corners=False, padding_mode="border". Images are
centre-cropped to a square first (rot90 needs one). Pixel-valued strengths (translation, blur σ) are given
at 32 px, the built-in datasets' size, and scaled by side / 32 (`pixel_scale`).
Masking (METRICS.md: "centre-crop or mask to a disc"): rotation uses the disc mask — both x and Tx are
multiplied by the inscribed disc (pixel centres within side/2 of the image centre, 0 outside), so the rotated
corners never show and the two views share the same support. rot90, flips and centred zoom-in crops sample no
pixel outside the image, so they need no mask. A translation band cannot be hidden by a disc or a centre crop
without cutting most of a 32 px image at 10 px shifts; it is filled by edge replication ("border" padding)
instead — invisible on uniform backgrounds (the shapes dataset), a visible smear on natural images.
Colour (torchvision.transforms.functional's blends, each clamped to [0, 1]): brightness x·b; contrast
(x − m)·c + m with m the mean luma of the image; saturation g + (x − g)·s with g the luma image; hue: RGB → HSV
(colorsys conventions), h + shift mod 1, → RGB; luma = Rec. 601 (worker.suites.common.images).
Blur: separable Gaussian of radius ceil(3 σ_max), reflect padding (torchvision / scipy.ndimage "mirror").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from worker.suites.common.images import luma
from worker.suites.equivariance.families import BLUR_SIGMA, FAMILIES

BLUR_TRUNCATE = 3.0  # kernel radius = ceil(3 σ_max)
HSV_EPS = 1e-12  # denominator floor of the HSV conversion (grey pixels have delta = 0)
BLUR_SIGMA_FLOOR = 1e-6  # σ floor inside the Gaussian; σ = 0 rows get the identity kernel instead


def disc_mask(h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:  # fmt: skip
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


def grayscale(x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """Images with on_i ≥ 0.5 replaced by their luma on all three channels."""
    sel = (on >= 0.5).view(-1, 1, 1, 1)
    return torch.where(sel, luma(x).expand_as(x), x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x · b, clamped to [0, 1]."""
    return (x * factor.view(-1, 1, 1, 1).to(x.dtype)).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(x − m) · c + m with m the image's mean luma, clamped to [0, 1]."""
    m = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * factor.view(-1, 1, 1, 1).to(x.dtype) + m).clamp(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """g + (x − g) · s with g the luma image, clamped to [0, 1]."""
    g = luma(x)
    return ((x - g) * factor.view(-1, 1, 1, 1).to(x.dtype) + g).clamp(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1] → HSV, all channels in [0, 1] (colorsys conventions, h in turns)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(HSV_EPS), torch.zeros_like(maxc))
    d = delta.clamp_min(HSV_EPS)
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
    """Hue rotated by `shift` turns in HSV, clamped to [0, 1]."""
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
    safe = sig.clamp_min(BLUR_SIGMA_FLOOR)[:, None]
    k = torch.exp(-0.5 * (taps[None, :] / safe) ** 2)
    k = torch.where((sig > 0)[:, None], k, (taps == 0).to(k.dtype)[None, :].expand_as(k))
    k = (k / k.sum(dim=1, keepdim=True)).to(x.dtype)
    kc = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kc.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kc.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def _colour(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (p's four columns), in this order."""
    y = adjust_brightness(x, p[:, 0])
    y = adjust_contrast(y, p[:, 1])
    y = adjust_saturation(y, p[:, 2])
    return adjust_hue(y, p[:, 3])


def _blur(x: torch.Tensor, p: torch.Tensor, pixel_scale: float) -> torch.Tensor:
    """The blur family: the kernel radius comes from the family's largest σ, not the batch's, so a view does
    not depend on which images share its batch."""
    radius = int(math.ceil(BLUR_TRUNCATE * BLUR_SIGMA[-1] * pixel_scale))
    return gaussian_blur(x, p[:, 0] * pixel_scale, radius=radius)


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
    if family in ("hflip", "vflip"):
        return flip(x, p[:, 0], 3 if family == "hflip" else 2)
    if family == "brightness":
        return adjust_brightness(x, p[:, 0])
    if family == "contrast":
        return adjust_contrast(x, p[:, 0])
    if family == "saturation":
        return adjust_saturation(x, p[:, 0])
    if family == "hue":
        return adjust_hue(x, p[:, 0])
    if family == "colour":
        return _colour(x, p)
    if family == "grayscale":
        return grayscale(x, p[:, 0])
    if family == "blur":
        return _blur(x, p, pixel_scale)
    raise ValueError(f"unknown family {family!r}")


def view(family: str, x: torch.Tensor, params: torch.Tensor | None, pixel_scale: float = 1.0) -> torch.Tensor:
    """What the encoder sees: T(x) (or x itself when params is None), then the family's mask."""
    y = x if params is None else apply_transform(family, x, params, pixel_scale)
    if FAMILIES[family].mask == "disc":
        y = y * disc_mask(y.shape[-2], y.shape[-1], y.device, y.dtype)
    return y
