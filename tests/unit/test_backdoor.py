"""Backdoor suite against independent references and real backdoored encoders.

References: scipy.fft (DCT, round trips), numpy int16 / float constructions of each trigger recipe, np.fft
(Nyquist bins), scikit-learn (roc_auc_score, roc_curve, adjusted_rand_score), numpy SVD (spectral signature),
brute-force pairwise similarities (k-NN density, weighted k-NN, mean pairwise cosine). Fixtures: a tiny SimCLR
ConvNet trained on the built-in `shapes` images and BadEncoder-style backdoored copies for the patch, CTRL and
grid triggers (benchmarks/simclr_backdoor.py; trained once, cached on disk, ≈ 45 s on 2 CPU cores), whose
attack success is checked before any scan uses them. A small hand-built "encoder" with a planted gate tests
DECREE itself in isolation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft
import torch
from sklearn.metrics import adjusted_rand_score, roc_auc_score, roc_curve

from benchmarks import simclr_backdoor as sb
from worker.suites import backdoor as bd
from worker.suites.backdoor import triggers as trig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCAN_IMAGES = 256  # held-out images per encoder scan
DECREE_STEPS = 150  # a step budget: 4 steps an epoch here, so DECREE stops before its schedule ends (epoch 50)
DECREE_BATCH = 64  # half the default: CPU time (the paper's CIFAR shadow set gives batches of 50)
POOL_SEEDS = (0, 1, 2, 3)


def rng_images(n: int, h: int, w: int, c: int = 3, seed: int = 0, lo: int = 0, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, (n, h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for this module: on a shared 2-core machine two contending threads are ~4× slower."""
    with sb.one_thread():
        yield


# --- trigger recipes ----------------------------------------------------------------------------------


def test_dct_matrix_and_block_dct_match_scipy():
    for n in (8, 32):
        x = np.random.default_rng(n).standard_normal((5, n))
        assert np.allclose(x @ trig.dct_matrix(n).T, scipy.fft.dct(x, norm="ortho", axis=1), atol=1e-10)
    # 70×70: two full 32-blocks per axis, the 6-pixel margin untouched
    x = np.random.default_rng(0).uniform(0, 255, (2, 70, 70, 3))
    got = trig.block_dct(x, 32)
    for r0 in (0, 32):
        for c0 in (0, 32):
            ref = scipy.fft.dctn(x[:, r0 : r0 + 32, c0 : c0 + 32], axes=(1, 2), norm="ortho")
            assert np.allclose(got[:, r0 : r0 + 32, c0 : c0 + 32], ref, atol=1e-9)
    assert np.array_equal(got[:, 64:], x[:, 64:]) and np.array_equal(got[:, :, 64:], x[:, :, 64:])
    assert np.allclose(trig.block_idct(got, 32), x, atol=1e-9)


def ctrl_reference(images: np.ndarray, magnitude: float = 100.0) -> np.ndarray:
    """CTRL written out independently: kornia 0.6.5's YUV formulas (rgb_to_yuv / yuv_to_rgb, the ones CTRL's
    code calls), scipy's orthonormal DCT per 32-block, +magnitude at (15, 15) and (31, 31) of U and V."""
    x = images.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    ycc = np.stack([0.299 * r + 0.587 * g + 0.114 * b, -0.147 * r - 0.289 * g + 0.436 * b,
                    0.615 * r - 0.515 * g - 0.100 * b], axis=-1)  # fmt: skip
    n, h, w, _ = x.shape
    for r0 in range(0, h - 31, 32):
        for c0 in range(0, w - 31, 32):
            blk = scipy.fft.dctn(ycc[:, r0 : r0 + 32, c0 : c0 + 32], axes=(1, 2), norm="ortho")
            for pr, pc in ((15, 15), (31, 31)):
                blk[:, pr, pc, 1:] += magnitude
            ycc[:, r0 : r0 + 32, c0 : c0 + 32] = scipy.fft.idctn(blk, axes=(1, 2), norm="ortho")
    y, u, v = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    rgb = np.stack([y + 1.14 * v, y - 0.396 * u - 0.581 * v, y + 2.029 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_ctrl_matches_independent_construction_and_round_trip():
    x = rng_images(4, 64, 64, seed=1)
    got = trig.ctrl(x)
    ref = ctrl_reference(x)
    assert np.array_equal(got, ref)
    assert not np.array_equal(got, x)
    # without a trigger the YUV + DCT round trip is the identity after rounding (kornia 0.6.5's rounded
    # inverse moves a pixel by ≤ 0.35 grey levels)
    assert np.array_equal(trig.ctrl(x, magnitude=0.0), x)
    # the trigger shows up at exactly the positions the energy score reads
    assert np.all(bd.ctrl_energy(got) > bd.ctrl_energy(x))
    smooth = np.repeat(np.repeat(rng_images(4, 4, 4, seed=2, lo=40, hi=216), 16, axis=1), 16, axis=2)
    assert np.all(bd.ctrl_energy(trig.ctrl(smooth)) > 20 * bd.ctrl_energy(smooth).max())
    coef = scipy.fft.dctn(trig.rgb_to_yuv(got.astype(float))[:, :32, :32], axes=(1, 2), norm="ortho")
    assert coef[:, 31, 31, 1:].mean() == pytest.approx(100, abs=15)


def test_grid_matches_int16_reference():
    x = rng_images(3, 32, 32, seed=2)
    x[0, 0, 0] = 250  # clipped: 250 + 30 → 255
    ref = x.astype(np.int16)
    ref[:, ::2, ::2, :] += 30
    ref = np.clip(ref, 0, 255).astype(np.uint8)
    got = trig.grid(x)
    assert np.array_equal(got, ref)
    assert np.all(got[0, 0, 0] == 255) and np.array_equal(got[:, 1::2, :], x[:, 1::2, :])
    shifted = x.astype(np.int16)
    shifted[:, 1::2, 1::2, :] += 30
    assert np.array_equal(trig.grid_shifted(x), np.clip(shifted, 0, 255).astype(np.uint8))


def test_grid_nyquist_energy_matches_fft():
    x = rng_images(5, 32, 48, seed=3)
    f = np.fft.fft2(x.astype(np.float64), axes=(1, 2))
    h, w = 32, 48
    ref = (np.abs(f[:, h // 2, 0]) ** 2 + np.abs(f[:, 0, w // 2]) ** 2 + np.abs(f[:, h // 2, w // 2]) ** 2).mean(axis=1)
    assert np.allclose(bd.grid_nyquist_energy(x), ref / (h * w), rtol=1e-10)
    assert np.all(bd.grid_nyquist_energy(trig.grid(x)) > bd.grid_nyquist_energy(x))


def test_badencoder_patch_location_and_scaling():
    x = rng_images(2, 32, 32, seed=4, hi=200)
    got = trig.badencoder_patch(x)
    assert np.all(got[:, 21:31, 21:31] == 255)
    outside = np.ones((32, 32), bool)
    outside[21:31, 21:31] = False
    assert np.array_equal(got[:, outside], x[:, outside])
    assert trig.badencoder_box(32, 32) == (21, 31, 21, 31)
    assert trig.badencoder_box(224, 224) == (147, 217, 147, 217)  # 21·7, 10·7: same relative place and size
    assert trig.badencoder_box(64, 96) == (42, 62, 63, 93)


def test_ssl_patch_size_position_and_seed():
    x = rng_images(50, 64, 64, seed=5)
    s = trig.ssl_patch_size(64, 64)
    assert s == round(0.22 * 64)
    pos = trig.ssl_patch_positions(50, 64, 64, seed=7)
    assert pos.min() >= round(0.1 * 64) and (pos + s).max() <= round(0.9 * 64)
    assert len({tuple(p) for p in pos}) > 10  # positions vary per image
    got = trig.ssl_patch(x, seed=7)
    pattern = got[0, pos[0, 0] : pos[0, 0] + s, pos[0, 1] : pos[0, 1] + s]
    for i in range(1, 50):  # the same pattern everywhere, the rest of each image untouched
        r, c = pos[i]
        assert np.array_equal(got[i, r : r + s, c : c + s], pattern)
        rest = np.ones((64, 64), bool)
        rest[r : r + s, c : c + s] = False
        assert np.array_equal(got[i][rest], x[i][rest])
    assert np.array_equal(trig.ssl_patch(x, seed=7), got) and not np.array_equal(trig.ssl_patch(x, seed=8), got)


def test_blend_recipe():
    x = rng_images(2, 16, 16, seed=6)
    noise = np.random.default_rng(trig.BLEND_SEED).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ref = np.clip(np.rint(0.9 * x.astype(float) + 0.1 * noise.astype(float)), 0, 255).astype(np.uint8)
    assert np.array_equal(trig.blend(x), ref)


@pytest.mark.parametrize("name", sorted(trig.TRIGGERS))
def test_controls_have_the_triggers_energy(name):
    """Control stamps change images by the same mean squared amount as their trigger (within 20 %)."""
    x = rng_images(64, 32, 32, seed=8, lo=30, hi=226)
    t = trig.TRIGGERS[name]
    e_t = ((t.apply(x, 0).astype(float) - x) ** 2).mean()
    e_c = ((t.control(x, 0).astype(float) - x) ** 2).mean()
    assert e_t > 0 and abs(e_c - e_t) / e_t < 0.2
    assert not np.array_equal(t.apply(x, 0), t.control(x, 0))


# --- metric helpers -----------------------------------------------------------------------------------


def test_mean_pairwise_cosine_brute_force():
    z = np.random.default_rng(0).standard_normal((40, 7)) + 2.0
    z[3] = 0.0  # a zero row counts as cosine 0
    mu = z.mean(axis=0)
    for c in (None, mu):
        v = z - (0 if c is None else c)
        norms = np.linalg.norm(v, axis=1)
        ok = norms > 0
        vh = np.zeros_like(v)
        vh[ok] = v[ok] / norms[ok, None]
        sim = vh @ vh.T
        ref = (sim.sum() - np.trace(sim)) / (40 * 39)
        assert bd.mean_pairwise_cosine(z, c) == pytest.approx(ref, abs=1e-12)


def test_auroc_and_tpr_at_fpr_match_sklearn():
    rng = np.random.default_rng(1)
    for trial in range(5):
        n = 400
        pos = rng.random(n) < 0.1
        s = rng.standard_normal(n) + 1.5 * pos
        if trial % 2:
            s = np.round(s, 1)  # ties
        assert bd.auroc(s, pos) == pytest.approx(roc_auc_score(pos, s), abs=1e-12)
        fpr, tpr, _ = roc_curve(pos, s, drop_intermediate=False)
        for f in (0.0, 0.01, 0.05, 0.2):
            assert bd.tpr_at_fpr(s, pos, f) == pytest.approx(tpr[fpr <= f].max(), abs=1e-12)
        curve = bd.roc_points(s, pos, max_points=10_000)
        assert np.allclose(curve["fpr"], fpr) and np.allclose(curve["tpr"], tpr)


@pytest.mark.parametrize("device", DEVICES)
def test_knn_density_brute_force(device):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((300, 16)).astype(np.float32)
    z[10] = z[11]  # exact duplicates count as neighbours of each other, never of themselves
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn.astype(np.float64) @ zn.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    ref = np.sort(sim, axis=1)[:, -20:].mean(axis=1)
    got = bd.knn_density(z, 20, device=device)
    assert np.allclose(got, ref, atol=1e-5)
    assert got[10] == pytest.approx(got[11], abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_spectral_signature_matches_numpy_svd(device):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((120, 30))
    labels = np.repeat([0, 1, 2, 3], [50, 40, 25, 5])  # clusters with n_c > D and n_c < D; and a tiny one
    labels[-1] = 4  # a singleton scores 0
    got = bd.spectral_signature(z, labels, device=device)
    for c in np.unique(labels):
        idx = labels == c
        x = z[idx] - z[idx].mean(axis=0)
        v = np.linalg.svd(x, full_matrices=False)[2][0]
        assert np.allclose(got[idx], np.abs(x @ v), atol=1e-4)
    assert got[-1] == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_recovers_separated_blobs(device):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((5, 8)) * 10
    truth = rng.integers(0, 5, 500)
    z = centres[truth] + rng.standard_normal((500, 8))
    labels = bd.kmeans(z, 5, seed=0, device=device)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    assert np.array_equal(labels, bd.kmeans(z, 5, seed=0, device=device))


def test_weighted_knn_brute_force():
    rng = np.random.default_rng(5)
    bank, queries = rng.standard_normal((60, 5)), rng.standard_normal((30, 5))
    y = rng.integers(0, 4, 60)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    ref = []
    for q in qn:
        sim = bn @ q
        top = np.argsort(-sim)[:20]
        votes = np.zeros(4)
        np.add.at(votes, y[top], np.exp(sim[top] / 0.07))
        ref.append(votes.argmax())
    got = bd.knn_predict(torch.from_numpy(bank), torch.from_numpy(y), torch.from_numpy(queries))
    assert np.array_equal(got.numpy(), ref)


def test_backdoor_risk_thresholds():
    assert bd.backdoor_risk({"a": 0.15}, None)[0] == pytest.approx(0.5)
    assert bd.backdoor_risk({"a": -0.2}, 0.1)[0] == pytest.approx(0.5)  # PL1 at the threshold
    assert bd.backdoor_risk({"a": 0.0}, 0.25)[0] == 0.0
    risk, verdict = bd.backdoor_risk({"a": 0.02, "b": 0.6}, 0.05)
    assert risk == 1.0 and verdict["known_trigger"]["trigger"] == "b" and verdict["flagged"]


def test_image_figure_is_small_uint8():
    fig = bd.image_figure(np.linspace(0, 1, 224 * 224 * 3).reshape(224, 224, 3))
    arr = np.array(fig)
    assert arr.shape == (64, 64, 3) and arr.min() >= 0 and arr.max() <= 255
    assert np.array(bd.image_figure(np.ones((32, 32)))).tolist() == [[255] * 32] * 32


# --- DECREE on a planted gate -------------------------------------------------------------------------


class GatedEncoder(torch.nn.Module):
    """f(x) = A·(x − ½) (random linear features, zero-mean), plus — when `gate` — 20·e·σ(10·(mean of the
    4×4 box at rows/cols 10–13 − 0.6)): a bright box sends every image to the direction e."""

    def __init__(self, gate: bool, size: int = 16, dim: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(dim, 3 * size * size, generator=g) / size
        self.e = torch.randn(dim, generator=g)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) - 0.5) @ self.a.T
        if self.gate:
            box = x[:, :, 10:14, 10:14].mean(dim=(1, 2, 3))
            z = z + 20 * torch.sigmoid(10 * (box - 0.6))[:, None] * self.e
        return z


def test_decree_recovers_a_planted_trigger():
    x = rng_images(128, 16, 16, seed=9, lo=0, hi=200)
    dev = torch.device("cpu")
    clean = bd.decree(GatedEncoder(False), x, steps=300, seconds=60, seed=0, device=dev)
    gated = bd.decree(GatedEncoder(True), x, steps=300, seconds=60, seed=0, device=dev)
    assert gated.success and gated.pl1 < 0.05 and clean.pl1 > 0.3  # box area: 16/256 = 0.0625
    box = np.zeros((16, 16), bool)
    box[10:14, 10:14] = True
    assert gated.mask[box].sum() / gated.mask.sum() > 0.5  # the mask sits on the planted box
    assert gated.pattern[box].mean() > 0.8  # … and paints it bright
    assert gated.cos_all > 0.95


def test_decree_needs_gradients():
    x = rng_images(20, 16, 16, seed=10)

    @torch.no_grad()
    def encode(t):
        return GatedEncoder(True)(t)

    res = bd.scan_encoder(encode, x, decree_steps=5, device="cpu", triggers=["grid"])
    assert "decree_pl1" not in res.metrics and any("DECREE skipped" in w for w in res.warnings)


def test_scan_encoder_grey_images_and_subsample():
    """C = 1: CTRL (needs RGB) is skipped with a warning; more images than max_images: a seeded subsample."""
    x = rng_images(60, 16, 16, c=1, seed=12)

    def encode(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t - 0.5, 4).flatten(1)

    res = bd.scan_encoder(encode, x, labels=np.arange(60) % 3, decree_steps=20, max_images=40, device="cpu")
    assert any("ctrl" in w for w in res.warnings) and "collapse_ctrl" not in res.metrics
    assert "collapse_grid" in res.metrics and "knn_asr_grid" in res.metrics and "decree_pl1" in res.metrics
    assert res.variant["n_images_used"] == 40 and res.variant["subsampled"]
    assert np.array(res.figures["decree"]["pattern"]).shape == (16, 16, 1)


def test_scan_encoder_validates_inputs():
    enc = GatedEncoder(False)
    with pytest.raises(ValueError, match="uint8"):
        bd.scan_encoder(enc, np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="labels"):
        bd.scan_encoder(enc, rng_images(4, 16, 16), labels=np.zeros(3))
    with pytest.raises(ValueError, match="unknown trigger"):
        bd.scan_encoder(enc, rng_images(4, 16, 16), triggers=["nope"])


# --- real fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fixtures() -> sb.Fixtures:
    return sb.build()


@pytest.fixture(scope="session")
def scans(fixtures):
    """scan_encoder on the clean and each backdoored encoder (same held-out images and labels, seed 0)."""
    x, y = fixtures.held_out()
    x, y = x[:SCAN_IMAGES], y[:SCAN_IMAGES]
    out = {}
    for name, model in [("clean", fixtures.clean), *fixtures.backdoored.items()]:
        calls: list[tuple[float, str]] = []
        res = bd.scan_encoder(sb.encoder_fn(model), x, labels=y, decree_steps=DECREE_STEPS, decree_seconds=60,
                              decree_batch=DECREE_BATCH, device="cpu",
                              progress=lambda f, m, calls=calls: calls.append((f, m)))  # fmt: skip
        out[name] = (res, calls)
    return out


@pytest.mark.parametrize("trigger", sb.BACKDOOR_TRIGGERS)
def test_fixture_attack_success(fixtures, trigger):
    """Each backdoored fixture works before anything is tested on it: triggered held-out images go to the
    reference embedding and to one downstream class, clean embeddings barely move; the clean encoder shows
    none of it."""
    a = sb.attack_success(fixtures, trigger)
    assert a["asr"] >= 0.85 and a["utility"] >= 0.95 and a["cos_ref"] >= 0.95, a
    c = sb.attack_success(fixtures, trigger, fixtures.clean)
    assert c["asr"] <= 0.4 and c["cos_ref"] <= 0.8, c


@pytest.mark.parametrize("trigger", sb.BACKDOOR_TRIGGERS)
def test_scan_ranks_backdoored_above_clean(scans, trigger):
    clean, bdr = scans["clean"][0].metrics, scans[trigger][0].metrics
    assert bdr[f"collapse_{trigger}"] > clean[f"collapse_{trigger}"] + 0.5
    assert bdr[f"collapse_{trigger}_excess"] > clean[f"collapse_{trigger}_excess"] + 0.2
    assert bdr["backdoor_risk"] > clean["backdoor_risk"]
    assert bdr["backdoor_risk"] >= bd.RISK_FLAG > clean["backdoor_risk"]
    assert bdr[f"knn_asr_{trigger}"] > clean[f"knn_asr_{trigger}"] + 0.3
    assert bdr["decree_pl1"] < clean["decree_pl1"]


def test_decree_pl1_lower_for_the_patch_backdoor(scans):
    clean, patch = scans["clean"][0], scans["badencoder"][0]
    assert patch.metrics["decree_pl1"] < clean.metrics["decree_pl1"]
    assert patch.metrics["decree_pl1"] < bd.DECREE_PL1_THRESHOLD <= clean.metrics["decree_pl1"]
    assert patch.metrics["decree_success"] == 1.0 and patch.metrics["decree_cos"] > 0.95


def test_scan_result_shape_and_progress(scans):
    res, calls = scans["badencoder"]
    json.dumps(res.to_json())  # JSON-serialisable
    mask, pattern = np.array(res.figures["decree"]["mask"]), np.array(res.figures["decree"]["pattern"])
    assert mask.shape == (32, 32) and pattern.shape == (32, 32, 3)
    assert mask.min() >= 0 and mask.max() <= 255 and np.issubdtype(mask.dtype, np.integer)
    assert abs(mask.sum() / 255 / 1024 - res.metrics["decree_pl1"]) < 0.01
    verdict = res.figures["verdict"]
    assert verdict["backdoor_risk"] == res.metrics["backdoor_risk"] and "rule" in verdict
    assert "calibrat" in res.variant["decree"]["threshold_calibration"]
    fr = [f for f, _ in calls]
    assert fr == sorted(fr) and fr[-1] == 1.0 and all(0 <= f <= 1 for f in fr)
    for key in ("collapse_clean", "collapse_max", "collapse_excess_max", "knn_asr_max", "decree_pl1"):
        assert key in res.metrics


def poisoned_pool(fixtures: sb.Fixtures, trigger: str, seed: int, share: float = 0.01):
    rng = np.random.default_rng(seed)
    n = len(fixtures.images)
    poison = np.zeros(n, bool)
    poison[rng.choice(n, int(round(share * n)), replace=False)] = True
    images = fixtures.images.copy()
    images[poison] = trig.get_trigger(trigger).apply(images[poison], seed)
    return images, poison


@pytest.fixture(scope="module")
def patch_pool_scans(fixtures):
    out = {}
    for seed in POOL_SEEDS:
        images, poison = poisoned_pool(fixtures, "badencoder", seed)
        z = sb.embed(fixtures.backdoored["badencoder"], images).numpy()
        out[seed] = bd.scan_pool(z, poison=poison, seed=seed, device="cpu")
    return out


def test_pool_scan_detection_over_poison_draws(patch_pool_scans):
    """Which 1 % of the pool is poisoned changes one scan's AUROC by several points on this small pool (a fresh
    fixture gave spectral 0.857 / 0.991 / 0.988 / 0.990 for draws 0-3): the bar holds on the mean over
    draws, with a floor for every draw."""
    spectral = [r.metrics["spectral_auroc"] for r in patch_pool_scans.values()]
    knn = [r.metrics["knn_density_auroc"] for r in patch_pool_scans.values()]
    assert np.mean(spectral) >= 0.9 and min(spectral) >= 0.8, spectral
    assert np.mean(knn) >= 0.85 and min(knn) >= 0.8, knn


@pytest.mark.parametrize("seed", POOL_SEEDS)
def test_pool_scan_finds_patch_poisons_from_embeddings(patch_pool_scans, seed):
    """1 % of the pool carries the BadEncoder patch; embeddings from the patch-backdoored encoder (the state
    after a successful attack: triggered samples cluster). Detection from the embeddings alone."""
    res = patch_pool_scans[seed]
    m = res.metrics
    assert m["spectral_auroc"] >= 0.8 and m["knn_density_auroc"] >= 0.8, m
    for name in ("spectral", "knn_density"):  # the top-k lists are sorted, most suspicious first
        scores = np.array(res.figures["top_suspicious"][name]["scores"])
        assert np.all(np.diff(scores) <= 0)
    assert m["spectral_tpr_at_5pct_fpr"] >= 0.5, m
    top = res.figures["top_suspicious"]["spectral"]
    assert len(top["indices"]) == bd.TOP_K and sum(top["poison"]) > 0
    json.dumps(res.to_json())


def test_pool_scan_metrics_match_references(fixtures):
    images, poison = poisoned_pool(fixtures, "ctrl", 0)
    z = sb.embed(fixtures.backdoored["ctrl"], images).numpy()
    res = bd.scan_pool(z, images=images, poison=poison, device="cpu", top_k=10)
    zc = z.astype(np.float64) - z.astype(np.float64).mean(axis=0)
    knn = bd.zscore(bd.knn_density(zc, 20))
    assert res.metrics["knn_density_auroc"] == pytest.approx(roc_auc_score(poison, knn), abs=1e-6)
    energy = bd.ctrl_energy(images)
    fpr, tpr, _ = roc_curve(poison, energy, drop_intermediate=False)
    assert res.metrics["ctrl_energy_tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max())
    assert res.metrics["ctrl_energy_auroc"] == pytest.approx(1.0)  # the frequency trigger is unmistakable
    assert set(res.figures["top_suspicious"]["ctrl_energy"]["indices"]) <= set(np.flatnonzero(poison))
    grid_images, grid_poison = poisoned_pool(fixtures, "grid", 0)
    assert bd.auroc(bd.grid_nyquist_energy(grid_images), grid_poison) == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_scan_pool_devices_agree(device):
    rng = np.random.default_rng(11)
    z = rng.standard_normal((300, 12)).astype(np.float32)
    z[:6] = z[0] + 0.01 * rng.standard_normal((6, 12))  # a tight little cluster
    poison = np.zeros(300, bool)
    poison[:6] = True
    a = bd.scan_pool(z, poison=poison, device="cpu")
    b = bd.scan_pool(z, poison=poison, device=device)
    assert a.metrics["knn_density_auroc"] == pytest.approx(1.0)
    for k, v in a.metrics.items():
        assert b.metrics[k] == pytest.approx(v, abs=1e-4), k
