"""Spectrum suite against independent references: numpy SVD / eigh, scipy, brute-force pairwise sums,
closed forms of constructed spectra, and a real sentence-transformer's embeddings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist

from tests.reference import load_minilm
from worker.suites.spectrum import (
    ALPHA_FIT_RANGE,
    RANKME_EPS,
    alpha_req,
    collapse_std,
    gram_spectrum,
    lidar,
    matryoshka_dims,
    rankme,
    run_spectrum,
    uniformity,
)
from worker.suites.spectrum import gram as sp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- independent references -----------------------------------------------------------------------


def svals(x: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)


def ref_rankme(s: np.ndarray, eps: float = RANKME_EPS) -> float:
    """The RankMe paper's code, in numpy: p = s / sum(s) + eps; exp(-sum p log p)."""
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def ref_cov_eigs(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return svals(x - x.mean(axis=0)) ** 2 / (x.shape[0] - 1)


def ref_uniformity(x: np.ndarray, t: float = 2.0) -> float:
    x = np.asarray(x, dtype=np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.log(np.mean(np.exp(-t * pdist(xn, "sqeuclidean")))))


def ref_collapse_std(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.std(xn, axis=0, ddof=1).mean())


def ref_alpha(lam: np.ndarray, first: int = 6, last: int = 100) -> tuple[float, float]:
    """np.polyfit with weights: polyfit minimises sum (w_i r_i)^2, so w = sqrt(1/i) gives weights 1/i."""
    from sklearn.metrics import r2_score

    i = np.arange(first, last + 1, dtype=np.float64)
    y = np.log(lam[first - 1 : last])
    slope, intercept = np.polyfit(np.log(i), y, 1, w=np.sqrt(1.0 / i))
    return float(-slope), float(r2_score(y, np.polyval([slope, intercept], np.log(i))))


def ref_lidar(views: np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    n, q, d = views.shape
    mu_x = views.mean(axis=1)
    diff_b = mu_x - mu_x.mean(axis=0)
    sigma_b = diff_b.T @ diff_b / (n - 1)
    diff_w = (views - mu_x[:, None, :]).reshape(n * q, d)
    sigma_w = diff_w.T @ diff_w / (n * (q - 1)) + delta * np.eye(d)
    inv_sqrt = np.linalg.inv(np.real(scipy.linalg.sqrtm(sigma_w)))
    lam = np.clip(scipy.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def gaussian(n: int, d: int, seed: int = 0, decay: float = 0.5) -> np.ndarray:
    """Gaussian rows with a decaying column scale, so spectra are not flat."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * (np.arange(1, d + 1) ** -decay)


def orthonormal(n: int, d: int, seed: int, orthogonal_to_ones: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d + int(orthogonal_to_ones)))
    if orthogonal_to_ones:
        a[:, 0] = 1.0
    q, _ = np.linalg.qr(a)
    return q[:, 1:] if orthogonal_to_ones else q


SHAPES = [(300, 40), (64, 100), (2000, 96)]


# --- singular values and RankMe -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gram_spectrum_matches_svd(shape, center, device):
    z = gaussian(*shape, seed=1) + 0.3
    ref = svals(z - z.mean(axis=0) if center else z)
    got = gram_spectrum(z, center=center, device=device, chunk_rows=256)
    assert got.dtype == np.float64 and got.shape == (min(shape),)
    assert np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9 * ref[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_rankme_and_spectrum_metrics_match_numpy(shape):
    z = gaussian(*shape, seed=2) + 0.1
    m = run_spectrum(z, device="cpu").metrics
    s, s_c, lam = svals(z), svals(z - z.mean(axis=0)), ref_cov_eigs(z)
    assert rel(m["rankme"], ref_rankme(s)) < 1e-6
    assert rel(m["rankme_centered"], ref_rankme(s_c)) < 1e-6
    assert rel(m["stable_rank"], np.sum(s**2) / s[0] ** 2) < 1e-9
    assert rel(m["nesum"], lam.sum() / lam[0]) < 1e-9
    assert rel(m["condition"], s[-1] / s[0]) < 1e-6  # all σ positive: the floor must not bite


def test_floor_leaves_generic_matrices_untouched():
    for shape in SHAPES:
        z = gaussian(*shape, seed=3)
        assert np.count_nonzero(gram_spectrum(z)) == min(shape)
        assert np.count_nonzero(gram_spectrum(z, center=True)) == min(shape[0] - 1, shape[1])


def test_known_spectrum_closed_form():
    n, d = 400, 64
    s = np.logspace(0, -3, d) * 50.0
    z = orthonormal(n, d, seed=4) @ np.diag(s) @ orthonormal(d, d, seed=5).T
    got = gram_spectrum(z, chunk_rows=33)
    np.testing.assert_allclose(got, s, rtol=1e-8)
    p = s / s.sum() + 1e-7
    m = run_spectrum(z).metrics
    assert rel(m["rankme"], float(np.exp(-np.sum(p * np.log(p))))) < 1e-9
    assert rel(m["stable_rank"], float(np.sum(s**2) / s[0] ** 2)) < 1e-9
    assert rel(m["condition"], s[-1] / s[0]) < 1e-7


@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_exact_low_rank_matches_svd(offset):
    rng = np.random.default_rng(6)
    n, d, r = 1500, 200, 6
    z = rng.standard_normal((n, r)) @ rng.standard_normal((r, d)) + offset
    res = run_spectrum(z, chunk_rows=500)
    g = np.asarray(res.figures["singular_values"])
    rank_raw = r + int(offset != 0)  # a shared offset outside the span adds one direction
    assert np.count_nonzero(g) == rank_raw
    assert g[rank_raw - 1] > 1e4 * res.variant["sigma_floor"] > 0
    assert rel(res.metrics["rankme"], ref_rankme(svals(z))) < 1e-6
    assert rel(res.metrics["rankme_centered"], ref_rankme(svals(z - z.mean(axis=0)))) < 1e-6
    assert np.count_nonzero(gram_spectrum(z, center=True)) == r


def test_rankme_function_closed_forms():
    assert rankme(np.zeros(5)) == 0.0
    assert rankme([]) == 0.0
    k = 7
    p = 1.0 / k + RANKME_EPS  # k equal singular values -> ~k
    assert rel(rankme(np.full(k, 3.0)), float(np.exp(-k * p * np.log(p)))) < 1e-12
    assert rankme(torch.ones(4, dtype=torch.float64)) == pytest.approx(4.0, rel=1e-5)


# --- degenerate inputs ----------------------------------------------------------------------------


def test_collapsed_to_one_point():
    rng = np.random.default_rng(7)
    n, d = 301, 32
    v = rng.standard_normal(d)
    z = np.tile(v, (n, 1))
    res = run_spectrum(z, chunk_rows=7)
    m = res.metrics
    eps = RANKME_EPS
    closed = float(np.exp(-((1 + eps) * np.log(1 + eps) + (d - 1) * eps * np.log(eps))))
    assert rel(m["rankme"], closed) < 1e-9  # σ = (√N‖v‖, 0, ..., 0)
    assert rel(m["rankme"], ref_rankme(svals(z))) < 1e-6
    assert np.asarray(res.figures["singular_values"])[1:].max() == 0.0
    assert rel(res.figures["singular_values"][0], np.sqrt(n) * np.linalg.norm(v)) < 1e-12
    # the centred spectrum is exactly zero: defined values
    assert m["rankme_centered"] == 0.0
    assert m["nesum"] == 0.0
    assert m["stable_rank"] == pytest.approx(1.0, rel=1e-12)
    assert m["condition"] == 1.0
    assert m["uniformity"] == pytest.approx(0.0, abs=1e-12)
    assert m["collapse_std"] == pytest.approx(0.0, abs=1e-12)
    assert m["rankme_centered@d16"] == 0.0 and m["collapse_std@d16"] == pytest.approx(0.0, abs=1e-12)
    assert "alpha_req" not in m and "alpha_req_r2" not in m
    assert any("alpha_req" in w for w in res.warnings)
    assert res.figures["explained_variance_cumulative"] == [0.0] * d
    json.dumps(res.to_json(), allow_nan=False)


def test_constant_offset_eats_one_singular_value():
    z0 = gaussian(400, 48, seed=8, decay=0.0)
    z0 -= z0.mean(axis=0)
    offset = 20.0 * np.random.default_rng(9).standard_normal(48)
    z = z0 + offset
    m, m0 = run_spectrum(z).metrics, run_spectrum(z0).metrics
    assert rel(m["rankme"], ref_rankme(svals(z))) < 1e-6
    assert rel(m["rankme_centered"], ref_rankme(svals(z - z.mean(axis=0)))) < 1e-6
    assert rel(m["rankme_centered"], m0["rankme_centered"]) < 1e-9  # centring removes the offset
    assert rel(m0["rankme"], m0["rankme_centered"]) < 1e-9  # already centred
    assert m["rankme"] < 0.5 * m["rankme_centered"]  # one huge σ dominates the raw spectrum
    for key in ("nesum", "alpha_req", "alpha_req_r2"):  # covariance metrics ignore the offset
        assert rel(m[key], m0[key]) < 1e-9, key


def test_n_less_than_d_warns_and_caps():
    res = run_spectrum(gaussian(30, 64, seed=10))
    assert any("capped" in w and "min(N, D) = 30" in w for w in res.warnings)
    assert res.metrics["rankme"] <= 30
    assert len(res.figures["singular_values"]) == 30
    assert not any("capped" in w for w in run_spectrum(gaussian(80, 64, seed=10)).warnings)


@pytest.mark.parametrize(
    "bad, exc",
    [
        (np.full((5, 3), np.nan), ValueError),
        (np.zeros(5), ValueError),
        (np.zeros((1, 4)), ValueError),
        (np.zeros((4, 3), dtype=np.complex128), TypeError),
    ],
)
def test_rejects_bad_input(bad, exc):
    with pytest.raises(exc):
        run_spectrum(bad)


# --- input paths: memmap, chunking, subsampling, tensors -------------------------------------------


class RecordingArray:
    """Array-like that records how many rows each read touches (to prove chunked reading)."""

    def __init__(self, arr: np.ndarray):
        self.arr, self.reads = arr, []
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, key):
        out = self.arr[key]
        self.reads.append(out.shape[0])
        return out


def test_float16_memmap_equals_in_memory_float64(tmp_path):
    z16 = (gaussian(1000, 48, seed=11) * 3 + 1).astype(np.float16)
    np.save(tmp_path / "e.npy", z16)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap)
    rec = RecordingArray(mm)
    got = run_spectrum(rec, chunk_rows=128, device="cpu")
    ref = run_spectrum(z16.astype(np.float64), chunk_rows=100_000, device="cpu")
    assert max(rec.reads) <= 128 and sum(rec.reads) == 2 * 1000  # Gram pass + uniformity rows
    for key, value in ref.metrics.items():
        assert rel(got.metrics[key], value) < 1e-9, key
    np.testing.assert_allclose(got.figures["singular_values"], ref.figures["singular_values"], rtol=1e-10)
    assert rel(got.metrics["rankme"], ref_rankme(svals(z16))) < 1e-6


def test_chunk_size_does_not_change_results():
    z = gaussian(250, 40, seed=12) + 0.5
    a, b = run_spectrum(z, chunk_rows=7), run_spectrum(z, chunk_rows=10_000)
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in b.metrics.items():
        assert rel(a.metrics[key], value) < 1e-9, key
    np.testing.assert_allclose(a.figures["singular_values"], b.figures["singular_values"], rtol=1e-10)


def test_subsample_uses_exactly_the_seeded_rows():
    z = gaussian(700, 24, seed=13) + 0.2
    rec = RecordingArray(z)
    res = run_spectrum(rec, max_rows=200, uniformity_max_rows=150, seed=5, chunk_rows=64)
    rows = np.sort(np.random.default_rng(5).choice(700, 200, replace=False))
    u_rows = np.sort(np.random.default_rng(5).choice(700, 150, replace=False))
    m = res.metrics
    assert rel(m["rankme"], ref_rankme(svals(z[rows]))) < 1e-6
    assert rel(m["rankme_centered"], ref_rankme(svals(z[rows] - z[rows].mean(axis=0)))) < 1e-6
    assert rel(m["collapse_std"], ref_collapse_std(z[rows])) < 1e-9
    assert rel(m["uniformity"], ref_uniformity(z[u_rows])) < 1e-9
    assert res.variant["n_rows_used"] == 200 and res.variant["n_rows_total"] == 700
    assert res.variant["subsampled"] and res.variant["subsample_seed"] == 5
    assert res.variant["uniformity_rows"] == 150
    assert sum(rec.reads) == 350 and max(rec.reads) <= 64
    other = run_spectrum(z, max_rows=200, seed=6).metrics["rankme"]
    assert rel(other, m["rankme"]) > 1e-9
    np.testing.assert_allclose(gram_spectrum(z, rows=rows), svals(z[rows]), rtol=1e-7)


def test_torch_input_matches_numpy():
    z = gaussian(200, 32, seed=14).astype(np.float32)
    a, b = run_spectrum(torch.from_numpy(z), chunk_rows=50), run_spectrum(z, chunk_rows=50)
    for key, value in b.metrics.items():
        assert rel(a.metrics[key], value) < 1e-12, key
    assert a.variant["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z = gaussian(3000, 256, seed=15) + 0.3
    a, b = run_spectrum(z, device="cuda", chunk_rows=700), run_spectrum(z, device="cpu")
    assert a.variant["device"].startswith("cuda")
    for key, value in b.metrics.items():
        assert rel(a.metrics[key], value) < 1e-8, key
    views = np.random.default_rng(0).standard_normal((50, 4, 20))
    assert rel(lidar(views, device="cuda"), lidar(views, device="cpu")) < 1e-9


# --- Matryoshka prefixes --------------------------------------------------------------------------


def test_matryoshka_dims():
    assert matryoshka_dims(128) == [64, 32, 16]
    assert matryoshka_dims(384) == [192, 96, 48, 24]
    assert matryoshka_dims(100) == [50, 25]
    assert matryoshka_dims(31) == [] and matryoshka_dims(16) == []


def test_matryoshka_prefix_equals_recomputation():
    z = gaussian(300, 128, seed=16, decay=0.3) + 0.05
    res = run_spectrum(z, chunk_rows=77)
    assert res.figures["matryoshka"]["dims"] == [128, 64, 32, 16]
    for j, k in enumerate([64, 32, 16], start=1):
        sub = run_spectrum(np.ascontiguousarray(z[:, :k])).metrics
        for key in sp.METRIC_KEYS:
            assert rel(res.metrics[f"{key}@d{k}"], sub[key]) < 1e-9, (key, k)
            assert res.figures["matryoshka"][key][j] == res.metrics[f"{key}@d{k}"]
        assert rel(res.metrics[f"rankme@d{k}"], ref_rankme(svals(z[:, :k]))) < 1e-6
        assert rel(res.metrics[f"uniformity@d{k}"], ref_uniformity(z[:, :k])) < 1e-9
        assert rel(res.metrics[f"collapse_std@d{k}"], ref_collapse_std(z[:, :k])) < 1e-9
    assert res.figures["matryoshka"]["rankme"][0] == res.metrics["rankme"]


# --- α-ReQ ------------------------------------------------------------------------------------------


def test_alpha_req_recovers_known_power_law():
    n, d, alpha = 600, 160, 1.3
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha  # covariance eigenvalues
    z = orthonormal(n, d, seed=17, orthogonal_to_ones=True) @ np.diag(np.sqrt((n - 1) * lam))
    z = z @ orthonormal(d, d, seed=18).T + 3.0  # rotate and offset: the covariance spectrum is unchanged
    res = run_spectrum(z)
    assert res.metrics["alpha_req"] == pytest.approx(alpha, abs=1e-8)
    assert res.metrics["alpha_req_r2"] == pytest.approx(1.0, abs=1e-10)
    fig = res.figures["alpha_fit"]
    assert fig["range"] == list(ALPHA_FIT_RANGE) and fig["alpha"] == res.metrics["alpha_req"]
    np.testing.assert_allclose(fig["log_lambda"], np.log(lam), atol=1e-8)
    np.testing.assert_allclose(fig["fit_line"], fig["log_lambda"], atol=1e-7)
    fit = alpha_req(lam * 17.0)  # scale-free
    assert (
        fit is not None and fit.alpha == pytest.approx(alpha, abs=1e-12) and (fit.first, fit.last) == (6, 100)
    )


def test_alpha_req_matches_weighted_polyfit():
    z = gaussian(500, 128, seed=19, decay=0.7)
    m = run_spectrum(z).metrics
    a_ref, r2_ref = ref_alpha(ref_cov_eigs(z))
    assert rel(m["alpha_req"], a_ref) < 1e-8
    assert rel(m["alpha_req_r2"], r2_ref) < 1e-8
    # reptrix's own formula (0-based eigen[5:100], x = -log(idx + 1), weights 1/(idx + 1), normal equations)
    lam = ref_cov_eigs(z)
    idx = np.arange(5, 100)
    x = np.stack([-np.log(idx + 1.0), np.ones(idx.size)], axis=1)
    w = 1.0 / (idx + 1.0)[:, None]
    b = np.linalg.solve(x.T @ (x * w), (w * x).T @ np.log(lam[idx]))
    assert rel(m["alpha_req"], float(b[0])) < 1e-8


def test_alpha_req_short_spectrum():
    lam = np.arange(1, 41, dtype=np.float64) ** -0.8
    fit = alpha_req(lam)
    assert fit is not None and (fit.first, fit.last) == (6, 40) and fit.alpha == pytest.approx(0.8)
    assert alpha_req(lam[:7]) is None  # ranks 6..7: too few points
    res = run_spectrum(gaussian(200, 40, seed=20))
    assert res.figures["alpha_fit"]["range"] == [6, 40]
    assert any("ranks 6..40" in w for w in res.warnings)


# --- uniformity and collapse std --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_uniformity_matches_brute_force(monkeypatch, device):
    z = gaussian(257, 20, seed=21) + 0.4
    expected = ref_uniformity(z)
    assert rel(uniformity(z, device=device), expected) < 1e-10
    monkeypatch.setattr(sp, "PAIRWISE_BLOCK_ELEMENTS", 257 * 10)  # many blocks, last one ragged
    assert rel(uniformity(z, device=device), expected) < 1e-10
    assert rel(run_spectrum(z, device=device).metrics["uniformity"], expected) < 1e-10
    assert rel(uniformity(z, t=0.5), ref_uniformity(z, t=0.5)) < 1e-10


def test_collapse_std_matches_lightly_formula():
    z = gaussian(333, 50, seed=22, decay=0.0) + 0.2
    expected = ref_collapse_std(z)
    assert rel(run_spectrum(z, chunk_rows=13).metrics["collapse_std"], expected) < 1e-10
    assert rel(collapse_std(z), expected) < 1e-12
    zt = torch.from_numpy(z)
    lightly = torch.nn.functional.normalize(zt, dim=1).std(dim=0).mean().item()  # lightly's one-liner
    assert rel(collapse_std(z), lightly) < 1e-12
    iso = np.random.default_rng(0).standard_normal((4000, 64))
    assert collapse_std(iso) == pytest.approx(1 / np.sqrt(64), rel=0.02)


# --- LiDAR ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, q, d", [(40, 5, 12), (9, 3, 16), (200, 2, 8)])
def test_lidar_matches_scipy_reference(n, q, d):
    rng = np.random.default_rng(23)
    centers = rng.standard_normal((n, 1, d)) * np.linspace(2.0, 0.1, d)
    views = centers + 0.3 * rng.standard_normal((n, q, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    expected = ref_lidar(views)
    assert rel(lidar(views), expected) < 1e-6
    assert rel(lidar(torch.from_numpy(views), chunk_samples=7), expected) < 1e-6
    assert rel(lidar(views, delta=1e-2, eps=1e-5), ref_lidar(views, 1e-2, 1e-5)) < 1e-6


@pytest.mark.parametrize("t2", [np.arange(1.0, 9.0), np.array([5.0, 5.0, 5.0, 0, 0, 0, 0, 0])])
def test_lidar_known_construction(t2):
    # Means M = Q diag(t) with zero column mean -> Σ_b = diag(t²) / (n − 1); two views m ± a_x with
    # a_x = c·e_(x mod d), c² = d/2 -> Σ_w = I exactly, so eig(Σ_LiDAR) = t² / ((n − 1)(1 + δ)).
    d, n, delta = 8, 64, 1e-4
    means = orthonormal(n, d, seed=24, orthogonal_to_ones=True) * np.sqrt(t2)
    a = np.zeros((n, d))
    a[np.arange(n), np.arange(n) % d] = np.sqrt(d / 2)
    views = np.stack([means + a, means - a], axis=1)
    lam = t2 / ((n - 1) * (1 + delta))
    p = lam / lam.sum() + 1e-7
    closed = float(np.exp(-np.sum(p * np.log(p))))
    assert rel(lidar(views, delta=delta), closed) < 1e-9
    if t2[-1] == 0:
        assert lidar(views) == pytest.approx(3.0, rel=1e-4)


def test_lidar_rejects_bad_shapes():
    with pytest.raises(ValueError):
        lidar(np.zeros((5, 1, 3)))
    with pytest.raises(ValueError):
        lidar(np.zeros((5, 3)))


# --- the result object ------------------------------------------------------------------------------


def test_result_shape_and_json():
    z = gaussian(150, 64, seed=25)
    calls: list[tuple[float, str]] = []
    res = run_spectrum(z, chunk_rows=10, progress=lambda f, msg: calls.append((f, msg)))
    payload = json.loads(json.dumps(res.to_json(), allow_nan=False))
    expected_keys = {*sp.METRIC_KEYS, *(f"{key}@d{k}" for key in sp.METRIC_KEYS for k in (32, 16))}
    assert set(payload["metrics"]) == expected_keys
    figs = payload["figures"]
    assert len(figs["singular_values"]) == 64
    ev = np.asarray(figs["explained_variance_cumulative"])
    assert np.all(np.diff(ev) >= -1e-15) and ev[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(ev, np.cumsum(ref_cov_eigs(z)) / ref_cov_eigs(z).sum(), rtol=1e-9)
    assert set(figs["alpha_fit"]) == {"log_i", "log_lambda", "fit_line", "alpha", "r2", "range"}
    assert set(figs["matryoshka"]) == {"dims", *sp.METRIC_KEYS}
    v = payload["variant"]
    assert v["gram_dtype"] == "float64" and v["n_rows_used"] == 150 and v["sigma_floor"] > 0
    assert "eps 1e-07 after normalisation" in v["rankme"]
    # progress: once per Gram chunk at least, fractions in [0, 1], non-decreasing, ends at 1
    fr = [f for f, _ in calls]
    assert sum("Gram" in msg for _, msg in calls) == 15
    assert (
        all(0.0 <= f <= 1.0 for f in fr) and all(b >= a for a, b in itertools.pairwise(fr)) and fr[-1] == 1.0
    )


# --- a realistic spectrum: a real sentence-transformer ---------------------------------------------


@pytest.fixture(scope="module")
def minilm_embeddings() -> np.ndarray:
    model = load_minilm()
    subjects = ["The old fisherman", "A curious child", "Our new neighbour", "The tired nurse", "A stray dog"]
    verbs = ["painted", "repaired", "forgot", "described", "sold"]
    objects = [
        "a wooden boat",
        "the broken clock",
        "her grandmother's recipe",
        "an ancient map",
        "the red bicycle",
    ]
    tails = ["before the storm.", "during the festival.", "with great care.", "in the quiet library."]
    sentences = [" ".join(parts) for parts in itertools.product(subjects, verbs, objects, tails)]
    sentences += [f"Invoice number {i} was paid {i % 7 + 1} days late." for i in range(0, 400, 4)]
    assert len(sentences) == 600
    torch.manual_seed(0)
    return model.encode(sentences, batch_size=100, convert_to_numpy=True)


def test_realistic_sentence_embeddings(minilm_embeddings):
    z = minilm_embeddings
    assert z.shape == (600, 384) and z.dtype == np.float32
    res = run_spectrum(z, chunk_rows=64)
    m = res.metrics
    s, s_c, lam = svals(z), svals(z - z.mean(axis=0)), ref_cov_eigs(z)
    assert 20 < m["rankme"] < 384  # a real, non-trivial spectrum
    assert rel(m["rankme"], ref_rankme(s)) < 1e-6
    assert rel(m["rankme_centered"], ref_rankme(s_c)) < 1e-6
    assert rel(m["stable_rank"], np.sum(s**2) / s[0] ** 2) < 1e-9
    assert rel(m["nesum"], lam.sum() / lam[0]) < 1e-9
    a_ref, r2_ref = ref_alpha(lam)
    assert rel(m["alpha_req"], a_ref) < 1e-6 and rel(m["alpha_req_r2"], r2_ref) < 1e-6
    assert rel(m["uniformity"], ref_uniformity(z)) < 1e-9
    assert rel(m["collapse_std"], ref_collapse_std(z)) < 1e-9
    assert rel(m["rankme@d96"], ref_rankme(svals(z[:, :96]))) < 1e-6
    np.testing.assert_allclose(res.figures["singular_values"][:50], s[:50], rtol=1e-9)


def test_cpu_blas_fast_path_equals_torch_path(monkeypatch):
    """dsyrk + dsyevd (CPU fast path) and addmm + torch eigvalsh give the same spectrum."""
    z = np.random.default_rng(11).standard_normal((500, 40)) + 0.3
    fast = sp.gram_spectrum(z, device="cpu", chunk_rows=64)
    fast_c = sp.gram_spectrum(z, device="cpu", chunk_rows=64, center=True)
    monkeypatch.setattr(sp, "CPU_BLAS", False)
    plain = sp.gram_spectrum(z, device="cpu", chunk_rows=64)
    plain_c = sp.gram_spectrum(z, device="cpu", chunk_rows=64, center=True)
    np.testing.assert_allclose(fast, plain, rtol=1e-12)
    np.testing.assert_allclose(fast_c, plain_c, rtol=1e-12)
    np.testing.assert_allclose(fast, np.linalg.svd(z, compute_uv=False), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_the_callers_array_is_read_never_written(dtype):
    """In-memory chunks are views of the caller's array: the pass shifts its own float64 copies."""
    z = (np.random.default_rng(12).standard_normal((300, 20)) + 2.0).astype(dtype)
    before = z.copy()
    run_spectrum(z, device="cpu", chunk_rows=64, matryoshka=True)
    sp.gram_spectrum(z, device="cpu", chunk_rows=64, center=True)
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int32])
def test_tensors_of_any_dtype_take_the_cpu_blas_path(dtype):
    """Tensor chunks numpy cannot view (bfloat16, integers) are converted to float64 before the BLAS pass."""
    z = torch.randint(-8, 9, (300, 20)).to(dtype)
    want = np.linalg.svd(z.to(torch.float64).numpy(), compute_uv=False)
    np.testing.assert_allclose(sp.gram_spectrum(z, device="cpu", chunk_rows=64), want, rtol=1e-10)


@pytest.mark.parametrize("where", [0, 150, 299])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cpu_blas", [True, False])
def test_a_non_finite_value_in_any_chunk_is_rejected(monkeypatch, where, bad, cpu_blas):
    """The finiteness check rides on each chunk's float64 column sums: one NaN/Inf anywhere, in the first
    chunk (it sets the shift) or a later one, is an error, not a spectrum."""
    monkeypatch.setattr(sp, "CPU_BLAS", cpu_blas)
    z = np.random.default_rng(13).standard_normal((300, 20)).astype(np.float32)
    z[where, 7] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        sp.gram_spectrum(z, device="cpu", chunk_rows=64)
    # the largest finite float32 values do not overflow the float64 sums: no false alarm
    z[where, 7] = np.finfo(np.float32).max
    assert np.isfinite(sp.gram_spectrum(z, device="cpu", chunk_rows=64)).all()


def test_float64_memmap_chunks_are_not_overwritten_by_the_prefetch(tmp_path):
    """Chunks are read into two reused buffers one step ahead; a float64 file needs no conversion, so a
    chunk must be detached from its buffer before the next read lands in it."""
    z = np.random.default_rng(5).standard_normal((997, 24)) + 1.0
    np.save(tmp_path / "z.npy", z)
    got = sp.gram_spectrum(np.load(tmp_path / "z.npy", mmap_mode="r"), device="cpu", chunk_rows=10)
    np.testing.assert_allclose(got, np.linalg.svd(z, compute_uv=False), rtol=1e-10)
