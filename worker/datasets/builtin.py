"""Built-in image datasets, generated locally from a seed (nothing is downloaded).

digits  scikit-learn's bundled handwritten digits (UCI ML hand-written digits, 1 797 images of 8x8, values
        0..16), scaled to 0..255, upsampled bilinearly (half-pixel centres, like
        torch.nn.functional.interpolate(align_corners=False)) to size x size, grey copied to RGB; labels 0-9 in
        scikit-learn's order; fixed stratified 80/20 split.
shapes  procedural shapes (SHAPE_CLASSES) with a random fill colour, size, position, rotation and background
        colour; every generative factor is stored per image, and ``render_shapes`` rebuilds any image
        from its factors alone (dSprites / 3dshapes style, for equivariance and disentanglement probes).

Everything is numpy float64 arithmetic on a fixed seed, so two calls give identical bytes and
``dataset_sha256`` is stable for a given numpy version.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from worker.suites.common.sampling import stratified_split as split_rows

DIGITS_MAX = 16.0  # sklearn load_digits pixel range is 0..16
DEFAULT_SIZE = 32
TEST_FRACTION = 0.2  # stratified 80/20, as the probe suite's default split (METRICS.md)
SPLIT_TRAIN, SPLIT_TEST = 0, 1

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SHAPES_PER_CLASS = 1000
SHAPE_RADIUS = (0.18, 0.36)  # radius of the disc each shape fits in, as a fraction of the image side
MIN_COLOUR_DISTANCE = 96  # max-channel difference between fill and background (re-drawn until reached)
SUPERSAMPLE = 4  # 4x4 sub-pixel samples per pixel for anti-aliased edges
CROSS_HALF_WIDTH = 0.3  # arm half-width of the cross, in units of the radius
RING_INNER = 0.55  # inner radius of the ring, in units of the radius
STAR_INNER = 0.45  # inner vertex radius of the five-pointed star
RENDER_CHUNK = 256  # images rendered at once (bounds memory: chunk x (size*SUPERSAMPLE)^2 floats)


@dataclass
class ImageDataset:
    """Images and their annotations, all aligned on the first axis.

    images  uint8 N x H x W x C (C = 1 or 3); labels int64 N; split int8 N (0 train, 1 test);
    factors per-image generative factors {name: array with first axis N}; classes: label -> name.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    classes: list[str]
    name: str
    factors: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 N x H x W x C with C in (1, 3), got "
                             f"{self.images.dtype} {self.images.shape}")  # fmt: skip
        for key, arr in (("labels", self.labels), ("split", self.split), *self.factors.items()):
            if len(arr) != n:
                raise ValueError(f"{key} has {len(arr)} entries for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def dataset_sha256(ds: ImageDataset) -> str:
    """sha256 over names, shapes, dtypes and bytes of every array (factors in sorted order) and the classes."""
    h = hashlib.sha256()

    def add(tag: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        h.update(f"{tag}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())

    add("images", ds.images)
    add("labels", ds.labels)
    add("split", ds.split)
    for key in sorted(ds.factors):
        add(f"factor:{key}", ds.factors[key])
    h.update(("classes|" + "\x1f".join(ds.classes)).encode())
    return h.hexdigest()


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = 0) -> np.ndarray:
    """int8 split (0 train / 1 test): per class, round(test_fraction * n_class) images drawn with the seed
    (Python rounding, ties to even; a class may sit on one side only; ``common.sampling.stratified_split``)."""
    _, test = split_rows(labels, test_fraction, seed, rounding="half_even", both_sides=False)
    split = np.zeros(len(labels), dtype=np.int8)
    split[test] = SPLIT_TEST
    return split


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float N x H x W x C with half-pixel centres (interpolate(align_corners=False),
    no antialias: meant for upsampling)."""

    def weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    (y0, y1, wy), (x0, x1, wx) = weights(images.shape[1], size[0]), weights(images.shape[2], size[1])
    rows = images[:, y0] * (1 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def digits(size: int = DEFAULT_SIZE, seed: int = 0) -> ImageDataset:
    """scikit-learn's 8x8 digits upsampled to size x size RGB uint8 (module docstring)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    gray = data.images.astype(np.float64)[..., None] * (255.0 / DIGITS_MAX)
    up = resize_bilinear(gray, (size, size)) if size != gray.shape[1] else gray
    images = np.repeat(np.clip(np.rint(up), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = data.target.astype(np.int64)
    return ImageDataset(
        images, labels, stratified_split(labels, seed=seed), [str(d) for d in range(10)], "digits"
    )


# ---------------------------------------------------------------- shapes


def _regular_polygon(k: int, start_deg: float = 90.0) -> np.ndarray:
    """k vertices on the unit circle, first one at start_deg (counter-clockwise in maths axes)."""
    a = np.deg2rad(start_deg) + 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(points: int = 5, inner: float = STAR_INNER) -> np.ndarray:
    outer = _regular_polygon(points)
    inner_v = inner * _regular_polygon(points, 90.0 + 180.0 / points)
    return np.stack([outer, inner_v], axis=1).reshape(-1, 2)


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    w = CROSS_HALF_WIDTH
    arm = math.sqrt(1 - w * w)  # the arm's outer corners lie on the unit circle
    au, av = np.abs(u), np.abs(v)
    return ((au <= w) & (av <= arm)) | ((av <= w) & (au <= arm))


_SQUARE = _regular_polygon(4, 45.0)
_TRIANGLE = _regular_polygon(3, 90.0)
_STAR = _star()
# Unit-radius shapes in local coordinates (u right, v up); each fits in the unit disc.
SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: _inside_polygon(u, v, _SQUARE),
    "triangle": lambda u, v: _inside_polygon(u, v, _TRIANGLE),
    "cross": _cross,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= RING_INNER**2),
    "star": lambda u, v: _inside_polygon(u, v, _STAR),
}


def render_shapes(
    cls: np.ndarray,
    colour: np.ndarray,
    radius: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    angle: np.ndarray,
    bg: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> np.ndarray:
    """Images (uint8 N x size x size x 3) from factors alone.

    Pixel (row i, column j) covers [j, j+1) x [i, i+1) in image coordinates (x right, y down); the shape is
    centred at (x, y), fits in a disc of the given radius (pixels) and is rotated by ``angle`` degrees
    counter-clockwise as seen on screen. Coverage is the fraction of SUPERSAMPLE^2 sub-pixel samples inside,
    and pixel = round(bg + coverage * (colour - bg)).
    """
    n = len(cls)
    offs = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    gx, gy = np.meshgrid(offs, offs)  # sample positions, shape (S*s, S*s); gy is the row coordinate
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, RENDER_CHUNK):
        sl = slice(start, min(n, start + RENDER_CHUNK))
        dx = (gx[None] - x[sl, None, None].astype(np.float64)) / radius[sl, None, None]
        dy = (y[sl, None, None].astype(np.float64) - gy[None]) / radius[sl, None, None]  # v points up
        t = np.deg2rad(angle[sl].astype(np.float64))[:, None, None]
        u = np.cos(t) * dx + np.sin(t) * dy  # rotate the sample by -angle into the shape's frame
        v = -np.sin(t) * dx + np.cos(t) * dy
        inside = np.zeros(u.shape, dtype=bool)
        for k, name in enumerate(classes):
            sel = cls[sl] == k
            if sel.any():
                inside[sel] = SHAPE_MASKS[name](u[sel], v[sel])
        cover = inside.reshape(-1, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))[..., None]
        fg, back = colour[sl, None, None].astype(np.float64), bg[sl, None, None].astype(np.float64)
        out[sl] = np.clip(np.rint(back + cover * (fg - back)), 0, 255).astype(np.uint8)
    return out


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill and background uint8 RGB, re-drawn until they differ by MIN_COLOUR_DISTANCE in some channel."""
    fg = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    while True:
        close = np.abs(fg.astype(np.int16) - bg.astype(np.int16)).max(axis=1) < MIN_COLOUR_DISTANCE
        if not close.any():
            return fg, bg
        fg[close] = rng.integers(0, 256, (int(close.sum()), 3), dtype=np.uint8)


def shapes(
    n_per_class: int = SHAPES_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> ImageDataset:
    """Procedural shapes: n_per_class images per class, factors class/colour/size/x/y/angle/bg stored."""
    unknown = [c for c in classes if c not in SHAPE_MASKS]
    if unknown:
        raise ValueError(f"unknown shape classes {unknown}; available: {sorted(SHAPE_MASKS)}")
    rng = np.random.default_rng(seed)
    n = n_per_class * len(classes)
    cls = rng.permutation(np.repeat(np.arange(len(classes), dtype=np.int64), n_per_class))
    radius = (rng.uniform(*SHAPE_RADIUS, n) * size).astype(np.float32)
    # centre so the whole disc stays inside the image
    x = (radius + rng.uniform(0, 1, n) * (size - 2 * radius)).astype(np.float32)
    y = (radius + rng.uniform(0, 1, n) * (size - 2 * radius)).astype(np.float32)
    angle = rng.uniform(0, 360, n).astype(np.float32)
    colour, bg = _colours(rng, n)
    images = render_shapes(cls, colour, radius, x, y, angle, bg, size=size, classes=classes)
    factors = {
        "class": cls.copy(),
        "colour": colour,
        "size": radius,
        "x": x,
        "y": y,
        "angle": angle,
        "bg": bg,
    }
    return ImageDataset(images, cls, stratified_split(cls, seed=seed), list(classes), "shapes", factors)


BUILTIN: dict[str, Callable[..., ImageDataset]] = {"digits": digits, "shapes": shapes}


def load_builtin(name: str, **kw) -> ImageDataset:
    """A built-in dataset by name (BUILTIN), with its generator's keyword arguments."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; available: {sorted(BUILTIN)}")
    return BUILTIN[name](**kw)
