"""The equivariance suite's ranked invariance summary (`invariance_rel_{family}`, Bouchacourt et al. 2021's
relative invariance) orders encoders whose answer is known by construction, per transformation family, and
neither a feature offset nor a feature scale decides the order (issue #23, item 4).

Each family gets an encoder invariant to it by construction and one sensitive to it. The invariant one's
output is multiplied by a small scale and shifted by a large random offset; the sensitive one is shifted by
another offset. Images: random square crops of scikit-image's bundled colour photographs, area-downsampled
to 32 px (no download). The score itself is checked against a brute-force numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from repscope import catalogue
from worker.suites import equivariance as eq
from worker.suites.equivariance.scores import relative_invariance

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
N_IMAGES, SIDE = 96, 32
GEOMETRIC_MARGIN, COLOUR_MARGIN = 0.25, 0.05  # measured gaps: ≥ 0.34 (translation), ≥ 0.066 (contrast)
INVARIANT_FLOOR = 0.97  # resampling (rings, translation's border) and clamping (brightness) keep some below 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """uint8 N×32×32×3: square crops (48 px to half the short side) of the bundled photographs, area-resized."""
    rng = np.random.default_rng(0)
    sources = [torch.from_numpy(getattr(skimage.data, p)()).permute(2, 0, 1).float() for p in PHOTOS]
    out = []
    for _ in range(N_IMAGES):
        im = sources[rng.integers(len(sources))]
        h, w = im.shape[1:]
        c = int(rng.integers(48, min(h, w) // 2 + 1))
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        out.append(F.interpolate(im[None, :, y : y + c, x : x + c], size=(SIDE, SIDE), mode="area")[0])
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --- constructed encoders: float N×3×s×s in [0, 1] -> N×D ---------------------------------------------------


def pool(x: torch.Tensor, k: int = 8) -> torch.Tensor:
    return F.interpolate(x, size=(k, k), mode="area")


def standardise(g: torch.Tensor) -> torch.Tensor:
    """Per image: subtract the mean, divide by the standard deviation over every pixel."""
    return (g - g.mean(dim=(1, 2, 3), keepdim=True)) / g.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def grey_pool(x: torch.Tensor) -> torch.Tensor:
    """Standardised Rec. 601 luma, 8×8 average pooling: sees where things are (rotation-, flip-, translation-
    and scale-sensitive); the issue's sensitive encoder."""
    return pool(standardise(eq.luma(x))).flatten(1)


def rings(x: torch.Tensor, n_rings: int = 8) -> torch.Tensor:
    """Mean RGB over n_rings annuli of the inscribed disc around the centre: rotation-invariant by
    construction (up to resampling); the issue's invariant encoder."""
    h, w = x.shape[-2:]
    yy = torch.arange(h, dtype=torch.float32) + 0.5 - h / 2
    xx = torch.arange(w, dtype=torch.float32) + 0.5 - w / 2
    r = torch.sqrt(yy[:, None] ** 2 + xx[None] ** 2) / (min(h, w) / 2)
    ring = torch.clamp((r * n_rings).long(), max=n_rings).flatten()
    onehot = F.one_hot(ring, n_rings + 1)[:, :n_rings].float()
    return (x.flatten(2) @ onehot / onehot.sum(0)).flatten(1)


def rot90_averaged(x: torch.Tensor) -> torch.Tensor:
    """grey_pool averaged over the four quarter turns (the group average): exactly rot90-invariant."""
    return sum(grey_pool(torch.rot90(x, k, dims=(2, 3))) for k in range(4))


def flip_averaged(dim: int):
    """grey_pool(x) + grey_pool(flip(x)): exactly invariant to that flip."""

    def enc(x: torch.Tensor) -> torch.Tensor:
        return grey_pool(x) + grey_pool(torch.flip(x, dims=(dim,)))

    return enc


def channel_stats(x: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of each channel over the whole image (global average pooling): invariant
    to a circular shift; the suite's shift replicates the border, so close to invariant."""
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def centre_colour(x: torch.Tensor) -> torch.Tensor:
    """Mean RGB of the central 2×2 pixels: a centred zoom keeps the centre where it is."""
    h, w = x.shape[-2:]
    return x[:, :, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1].mean(dim=(2, 3))


def luma_standardised(x: torch.Tensor) -> torch.Tensor:
    """Standardised luma, 8×8 pooling: blind to brightness and contrast (up to clamping at 1)."""
    return pool(standardise(eq.luma(x))).flatten(1)


def luma_raw(x: torch.Tensor) -> torch.Tensor:
    """Luma, 8×8 pooling: brightness-sensitive; blind to saturation and to grayscale (luma is kept)."""
    return pool(eq.luma(x)).flatten(1)


def local_contrast(x: torch.Tensor, cells: int = 4) -> torch.Tensor:
    """Standard deviation of luma in each of 4×4 cells: scales with contrast."""
    g = eq.luma(x)
    n = g.shape[-1] // cells
    return g.unfold(2, n, n).unfold(3, n, n).reshape(len(g), cells * cells, -1).std(dim=-1)


def chroma(x: torch.Tensor) -> torch.Tensor:
    """RGB minus luma, 4×4 pooling: hue- and grayscale-sensitive."""
    return pool(x - eq.luma(x), 4).flatten(1)


def chroma_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Σ_c |x_c − luma|, 4×4 pooling: scales with saturation."""
    return pool((x - eq.luma(x)).abs().sum(dim=1, keepdim=True), 4).flatten(1)


def value_and_chroma(x: torch.Tensor) -> torch.Tensor:
    """HSV value max(R, G, B) and max − min, 4×4 pooling: an HSV hue rotation keeps both exactly."""
    hi, lo = x.max(dim=1, keepdim=True).values, x.min(dim=1, keepdim=True).values
    return pool(torch.cat([hi, hi - lo], dim=1), 4).flatten(1)


def coarse_colour(x: torch.Tensor) -> torch.Tensor:
    """RGB at 2×2 pooling: a Gaussian blur of σ ≤ 2 px barely moves 16×16 means."""
    return pool(x, 2).flatten(1)


LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def edge_energy(x: torch.Tensor) -> torch.Tensor:
    """|Laplacian of luma|, 4×4 pooling: fine detail, which blur removes."""
    g = F.pad(eq.luma(x), (1, 1, 1, 1), mode="replicate")
    return pool(F.conv2d(g, LAPLACE).abs(), 4).flatten(1)


# family -> (invariant encoder, sensitive encoder, margin)
KNOWN = {
    "rotation": (rings, grey_pool, GEOMETRIC_MARGIN),
    "rot90": (rot90_averaged, grey_pool, GEOMETRIC_MARGIN),
    "translation": (channel_stats, grey_pool, GEOMETRIC_MARGIN),
    "scale": (centre_colour, grey_pool, GEOMETRIC_MARGIN),
    "hflip": (flip_averaged(3), grey_pool, GEOMETRIC_MARGIN),
    "vflip": (flip_averaged(2), grey_pool, GEOMETRIC_MARGIN),
    "brightness": (luma_standardised, luma_raw, COLOUR_MARGIN),
    "contrast": (luma_standardised, local_contrast, COLOUR_MARGIN),
    "saturation": (luma_raw, chroma_magnitude, COLOUR_MARGIN),
    "hue": (value_and_chroma, chroma, COLOUR_MARGIN),
    "grayscale": (luma_raw, chroma, COLOUR_MARGIN),
    "blur": (coarse_colour, edge_energy, GEOMETRIC_MARGIN),
}


def shifted(enc, scale: float, offset_norm: float, seed: int):
    """enc(x) · scale + a fixed random offset vector of norm offset_norm (the same for every image)."""

    def out(x: torch.Tensor) -> torch.Tensor:
        z = enc(x)
        g = torch.Generator().manual_seed(seed)
        o = torch.randn(z.shape[1], generator=g)
        return z * scale + o * (offset_norm / o.norm())

    return out


def run(enc, images: np.ndarray, family: str) -> dict[str, float]:
    return eq.run_equivariance(
        enc, images, families=[family], n_images=N_IMAGES, mlp=False, n_draws=1
    ).metrics


# --- the score --------------------------------------------------------------------------------------------


def brute_force(z: np.ndarray, w: np.ndarray) -> float:
    n = len(z)
    d = ((z[:, None, :] - w[None, :, :]) ** 2).sum(-1)  # d[i, j] = ‖z_i − w_j‖²
    return 1.0 - np.mean(np.diag(d)) / (d[~np.eye(n, dtype=bool)].mean())


def test_relative_invariance_matches_brute_force_and_ignores_offset_scale_rotation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 7)) * rng.uniform(0.2, 3.0, 7) + 2.0
    w = z + 0.4 * rng.standard_normal((40, 7)) + 0.3  # a change plus a shared shift
    got = relative_invariance(torch.from_numpy(z), torch.from_numpy(w))
    assert got == pytest.approx(brute_force(z, w), rel=1e-12)
    q = np.linalg.qr(rng.standard_normal((7, 7)))[0]
    offset = rng.standard_normal(7) * 1e4
    for a in (1e-3, 250.0):
        moved = relative_invariance(
            torch.from_numpy(a * z @ q + offset), torch.from_numpy(a * w @ q + offset)
        )
        assert moved == pytest.approx(got, rel=1e-9)
    # limits: unchanged features 1; features of an unrelated image ≈ 0; a constant encoder is undefined
    assert relative_invariance(torch.from_numpy(z), torch.from_numpy(z.copy())) == 1.0
    big = rng.standard_normal((2000, 5))
    assert (
        abs(relative_invariance(torch.from_numpy(big), torch.from_numpy(big[rng.permutation(2000)]))) < 0.05
    )  # SE 0.014
    assert math.isnan(relative_invariance(torch.ones(10, 3), torch.ones(10, 3)))


# --- the suite orders the constructed encoders ---------------------------------------------------------------


@pytest.mark.parametrize("family", list(KNOWN))
def test_invariant_encoder_outranks_sensitive_one(family, photos):
    invariant, sensitive, margin = KNOWN[family]
    inv = run(shifted(invariant, 0.01, 1e3, seed=1), photos, family)
    sen = run(shifted(sensitive, 1.0, 10.0, seed=2), photos, family)
    key = f"invariance_rel_{family}"
    assert inv[key] > INVARIANT_FLOOR
    assert inv[key] > sen[key] + margin
    assert inv["invariance_rel_mean"] == inv[key]  # one family run: its mean is the family's value
    # offsets and scales do not move the score (only float32 rounding of the shifted features)
    assert run(invariant, photos, family)[key] == pytest.approx(inv[key], abs=2e-4)
    assert run(sensitive, photos, family)[key] == pytest.approx(sen[key], abs=2e-4)


def test_cosine_summaries_rank_by_offset_and_the_relative_one_does_not(photos):
    """The trap of issue #23: centring the (nearly) translation-invariant channel statistics and shifting the
    translation-sensitive grey pooling by a constant reverses the mean-cosine AUC; the relative score keeps
    the order whatever the offsets."""
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255
    mean = channel_stats(x).mean(dim=0)
    inv_centred = run(lambda v: channel_stats(v) - mean, photos, "translation")
    sen_offset = run(lambda v: grey_pool(v) + 10.0, photos, "translation")
    assert inv_centred["invariance_auc_translation"] < sen_offset["invariance_auc_translation"]
    assert (
        inv_centred["invariance_rel_translation"]
        > sen_offset["invariance_rel_translation"] + GEOMETRIC_MARGIN
    )


def test_ranked_views_use_the_relative_summary(photos):
    res = eq.run_equivariance(grey_pool, photos, families=["hflip", "blur"], n_images=N_IMAGES, mlp=False,
                              n_draws=1)  # fmt: skip
    m = res.metrics
    assert m["invariance_rel_mean"] == pytest.approx(
        (m["invariance_rel_hflip"] + m["invariance_rel_blur"]) / 2
    )
    curve = res.figures["invariance"]["blur"]
    assert curve["relative"][0] == 1.0 and curve["relative_mean"] == pytest.approx(
        np.mean(curve["relative"][1:])
    )
    assert [a["key"] for a in res.figures["radar"]["axes"]][0] == "invariance_rel_mean"
    assert "normalisation" in res.variant["invariance"]
    assert "invariance_rel_mean" in catalogue.HEADLINE and "invariance_rel_mean" in catalogue.RADAR
    assert "invariance_auc_mean" not in catalogue.HEADLINE
    for key in ("invariance_rel_mean", "invariance_rel_rotation"):
        assert catalogue.direction(key) == "higher" and catalogue.lookup(key).suite == "equivariance"
    for key in ("invariance_auc_mean", "invariance_normalized_auc_rotation", "invariance_corrected_auc_hue"):
        assert catalogue.direction(key) == "none", key
