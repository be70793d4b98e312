"""The pool scan on natural, clustered pools (issue #23, item 3): the new scores against independent references
(scikit-learn's LOF, scipy's matrix exponential, known-answer constructions) and a small version of
benchmarks/bench_pool_natural.py (near-duplicate views of scikit-image's photographs, a SimCLR encoder trained on
them, BadEncoder-style backdoors for two triggers) asserting the AUROC bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from sklearn.neighbors import LocalOutlierFactor

from worker.suites import backdoor as bd
from worker.suites.backdoor import lof as lof_mod
from worker.suites.backdoor import spectre as spectre_mod

SMALL = dict(n_images=1200, simclr_steps=50, backdoor_steps=50, triggers=("badencoder", "blend"))
SMALL_RATES = (0.01, 0.02)
BAR = 0.9


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16)) * 3
    z = np.concatenate(
        [c + 0.3 * rng.standard_normal((n, 16)) for c, n in zip(centres, (150, 120, 100, 60), strict=True)]
    )
    return z.astype(np.float32)


@pytest.mark.parametrize("k", [5, 20])
def test_lof_matches_sklearn(k):
    """float32 cosine products: log LOF agrees to ≈ 1e-4 on a tight group (distances ≈ 5e-4)."""
    z = blobs()
    z[:8] = z[0] + 0.1 * np.random.default_rng(1).standard_normal((8, 16))  # a tight little group
    ours = lof_mod.local_outlier_factor(z, ks=(k,), device="cpu")[k]
    ref = LocalOutlierFactor(n_neighbors=k, metric="cosine", algorithm="brute").fit(z.astype(np.float64))
    np.testing.assert_allclose(ours, np.log(-ref.negative_outlier_factor_), atol=1e-4)


def test_lof_with_a_bank_matches_sklearn_novelty():
    z = blobs(2)
    bank = lof_mod.bank_rows(len(z), 200, seed=3)
    assert len(bank) == 200 and np.all(np.diff(bank) > 0)
    ours = lof_mod.local_outlier_factor(z, ks=(10,), bank=200, seed=3, device="cpu")[10]
    z64 = z.astype(np.float64)
    ref = LocalOutlierFactor(n_neighbors=10, metric="cosine", algorithm="brute", novelty=True).fit(z64[bank])
    rest = np.setdiff1d(np.arange(len(z)), bank)
    np.testing.assert_allclose(
        ours[rest], np.log(-ref.score_samples(z64[rest])), atol=1e-4
    )  # scored against it
    np.testing.assert_allclose(
        ours[bank], np.log(-ref.negative_outlier_factor_), atol=1e-4
    )  # itself excluded


def test_lof_ks_scale_with_the_bank():
    assert lof_mod.lof_ks(2400) == (10, 20, 48, 96)
    assert len(lof_mod.bank_rows(100_000)) == lof_mod.LOF_BANK == 2048
    assert lof_mod.lof_ks(lof_mod.LOF_BANK) == (10, 20, 41, 82)
    assert lof_mod.lof_ks(12) == (10, 11)


def test_multiscale_lof_is_the_max_of_robust_z():
    z = blobs(4)
    per_k = lof_mod.local_outlier_factor(z, device="cpu")
    score, ks = lof_mod.multiscale_lof(z, device="cpu")
    assert ks == tuple(per_k)
    mad_z = [(v - np.median(v)) / (1.4826 * np.median(np.abs(v - np.median(v)))) for v in per_k.values()]
    np.testing.assert_allclose(score, np.max(mad_z, axis=0))


def test_merge_small_clusters_known_answer():
    rng = np.random.default_rng(0)
    a, b, c = np.eye(3) * 5
    near_a = a + np.array([0.0, 2.0, 0.0])  # nearer a than c by centroid cosine
    z = np.concatenate(
        [
            a + 0.1 * rng.standard_normal((50, 3)),
            b + 0.1 * rng.standard_normal((40, 3)),
            c + 0.1 * rng.standard_normal((30, 3)),
            near_a + 0.1 * rng.standard_normal((5, 3)),
        ]
    )
    labels = np.repeat([7, 3, 5, 9], [50, 40, 30, 5])
    merged = bd.merge_small_clusters(z, labels, 10, device="cpu")
    # 9 (5 rows) joins 7, labels renumbered in label order: 3 → 0, 5 → 1, 7 → 2
    np.testing.assert_array_equal(merged, np.repeat([2, 0, 1, 2], [50, 40, 30, 5]))
    np.testing.assert_array_equal(
        bd.merge_small_clusters(z, labels, 1, device="cpu"), np.repeat([2, 0, 1, 3], [50, 40, 30, 5])
    )  # nothing under the size: renumbered
    assert set(bd.merge_small_clusters(z, labels, 1000, device="cpu")) == {0}  # all into one


def spectre_reference(x: np.ndarray, dims: int, trim: float, alpha: float, steps: int) -> np.ndarray:
    """numpy / scipy: SVD for the PCA, scipy.linalg.expm for Q (the suite uses eigh for both)."""
    x = x - x.mean(axis=0)
    y = x @ np.linalg.svd(x, full_matrices=False)[2][:dims].T
    keep = np.arange(len(y))
    h = len(y) - round(trim * len(y))

    def whiten(ref):
        mu, cov = ref.mean(axis=0), np.cov(ref.T, bias=True)
        ev, vec = np.linalg.eigh(cov)
        return (y - mu) @ vec / np.sqrt(ev)

    for _ in range(steps):
        keep = np.argsort((whiten(y[keep]) ** 2).sum(axis=1))[:h]
    w = whiten(y[keep])
    s = np.cov(w.T, bias=True)
    q = expm(alpha * (s - np.eye(dims)) / (np.linalg.eigvalsh(s).max() - 1))
    q /= np.trace(q)
    return np.einsum("ij,jk,ik->i", w, q, w)


def test_spectre_matches_reference_and_finds_a_low_variance_plant():
    rng = np.random.default_rng(5)
    scales = np.r_[np.full(4, 6.0), np.ones(28)]  # clean variance in 4 large directions …
    x = rng.standard_normal((400, 32)) * scales
    plant = np.zeros(400, bool)
    plant[:20] = True
    x[plant, 20] += 6.0  # … the poisons shift along a small one
    labels = np.zeros(400, np.int64)
    ours = bd.spectre_scores(x, labels, dims=8, device="cpu")
    ref = spectre_reference(
        x, 8, spectre_mod.SPECTRE_TRIM, spectre_mod.SPECTRE_ALPHA, spectre_mod.SPECTRE_CSTEPS
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    full = bd.spectre_scores(x, labels, dims=32, device="cpu")
    assert bd.auroc(full, plant) > 0.99  # whitening exposes the small direction …
    assert (
        bd.auroc(bd.spectral_signature(x, labels, device="cpu"), plant) < 0.7
    )  # … the plain signature misses it


def test_combine_known_answer():
    a = np.array([0.0, 1.0, 2.0, 3.0, 10.0])  # median 2, MAD 1
    b = np.array([5.0, 5.0, 4.0, 6.0, 0.0])  # median 5, MAD 1
    za, zb = (a - 2) / 1.4826, (b - 5) / 1.4826
    expect = np.log1p(np.maximum(za, 0)) + np.log1p(np.maximum(zb, 0))
    np.testing.assert_allclose(
        bd.combine({"a": a, "b": b, "c": a * 0}, members=("a", "b", "missing")), expect
    )
    with pytest.raises(ValueError):
        bd.combine({"a": a}, members=("x",))


def test_scan_pool_reports_the_new_scores():
    z = blobs(6)
    poison = np.zeros(len(z), bool)
    poison[:6] = True
    z[:6] = z[200] + 0.3 + 0.01 * np.random.default_rng(0).standard_normal((6, 16))  # beside a clean blob
    res = bd.scan_pool(z, poison=poison, device="cpu", top_k=5)
    for s in ("lof", "spectral_robust", "spectre", "combined"):
        for suffix in ("outlier_share", "auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"):
            assert f"{s}_{suffix}" in res.metrics
        assert s in res.figures["top_suspicious"] and s in res.figures["roc"]
    assert res.figures["default_score"] == bd.DEFAULT_SCORE == "combined"
    assert sum(res.figures["robust_cluster_sizes"]) == len(z)
    assert min(res.figures["robust_cluster_sizes"]) >= 0.03 * len(z)
    assert set(bd.POOL_SCORES) >= {"knn_density", "spectral", "ctrl_energy", "grid_energy", "combined"}


@pytest.fixture(scope="module")
def natural():
    from benchmarks import natural_pools as npl

    fx = npl.build(npl.PoolConfig(seed=0, **SMALL))
    out = {}
    for trigger in SMALL["triggers"]:
        for rate in SMALL_RATES:
            z, images, flags = npl.pool_embeddings(fx, trigger, rate, 0)
            out[(trigger, rate)] = bd.scan_pool(z, poison=flags, device="cpu", top_k=10).metrics
    return fx, out


def test_natural_pool_is_clustered_and_knn_density_fails(natural):
    """The regime of the issue: k-NN density of the poisons is no higher than that of clean samples."""
    fx, scans = natural
    sizes = np.bincount(fx.scene)
    assert len(sizes) == 28 and sizes.min() >= 8 and sizes.max() > 3 * np.median(sizes)
    assert np.mean([m["knn_density_auroc"] for m in scans.values()]) < 0.6, scans


@pytest.mark.parametrize("trigger", SMALL["triggers"])
@pytest.mark.parametrize("rate", SMALL_RATES)
def test_natural_pool_auroc_bar(natural, trigger, rate):
    m = natural[1][(trigger, rate)]
    label_free = ("knn_density", "spectral", "lof", "spectral_robust", "spectre", "combined")
    best = max(m[f"{s}_auroc"] for s in label_free)
    assert m["combined_auroc"] >= BAR and best >= BAR, {s: round(m[f"{s}_auroc"], 3) for s in label_free}
