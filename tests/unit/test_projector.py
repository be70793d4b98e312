"""The embedding projector (worker/suites/projector, backend/projector.py, its pages): PCA against scikit-learn,
the sample against numpy's generator, the density against the pool scan and brute force, UMAP when umap-learn
is installed, the payload bound, the colour mapping, and the pages over the real app."""

from __future__ import annotations

import html
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from backend import projector as view
from worker.suites.projector import knn_density, pca_2d, project
from worker.suites.projector import protocol as project_module
from worker.suites.projector.protocol import MAX_POINTS, UMAP_AUTO_MAX, compact


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def anisotropic(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.geomspace(3.0, 0.1, d) + rng.standard_normal(d)


def clusters(n_per: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian clusters (centres 20 apart, unit spread) and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, d))
    centres[0, 0], centres[1, 1], centres[2, 2] = 20.0, 20.0, 20.0
    labels = np.repeat(np.arange(3), n_per)
    return (centres[labels] + rng.standard_normal((3 * n_per, d))).astype(np.float32), labels


def assert_equal_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    for k in range(a.shape[1]):
        sign = np.sign(a[:, k] @ b[:, k]) or 1.0
        np.testing.assert_allclose(a[:, k], sign * b[:, k], atol=atol)


@pytest.mark.parametrize(("n", "d"), [(500, 20), (40, 200)])  # covariance path, Gram path (D > n)
def test_pca_equals_sklearn_up_to_sign(n, d):
    x = anisotropic(n, d)
    ours = pca_2d(x, device="cpu")
    ref = PCA(n_components=2, svd_solver="full").fit(x)
    assert_equal_up_to_sign(ours.coords, ref.transform(x), atol=1e-9)
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10)
    assert_equal_up_to_sign(ours.components.T, ref.components_.T, atol=1e-9)
    # scikit-learn's sign convention: each component's largest loading is positive
    assert all(c[np.argmax(np.abs(c))] > 0 for c in ours.components)


def test_pca_of_degenerate_inputs():
    line = np.outer(np.arange(10.0), [1.0, 2.0, 0.0])  # rank 1: the second coordinate is 0
    p = pca_2d(line, device="cpu")
    np.testing.assert_allclose(p.explained_variance_ratio, [1.0, 0.0], atol=1e-12)
    assert np.all(p.coords[:, 1] == 0)
    one_dim = pca_2d(np.arange(5.0)[:, None], device="cpu")
    np.testing.assert_allclose(np.abs(one_dim.coords[:, 0]), np.abs(np.arange(5.0) - 2.0))
    assert np.all(one_dim.coords[:, 1] == 0) and one_dim.explained_variance_ratio[0] == pytest.approx(1.0)
    flat = project(np.ones((6, 3), dtype=np.float32), projection="pca", density=False)
    assert flat.figures["projections"]["pca"]["x"] == [0.0] * 6 and "zero variance" in flat.warnings[0]
    with pytest.raises(ValueError, match="at least 2 rows"):
        pca_2d(np.ones((1, 3)))


def test_compact_keeps_four_significant_digits_of_the_largest_value():
    assert compact(np.array([123.456, 0.0012345, -9.87654])) == [123.5, 0.0, -9.9]
    assert compact(np.array([0.012346, -0.00098765])) == [0.01235, -0.00099]
    assert compact(np.zeros(3)) == [0.0, 0.0, 0.0]


def test_sample_bound_seed_and_row_data():
    """25 000 rows: the drawn rows are numpy's seeded choice, at most MAX_POINTS, and every per-row array of the
    figure (coordinates, labels, split, poison) belongs to those rows."""
    n = 25_000
    rng = np.random.default_rng(1)
    z = rng.standard_normal((n, 6)).astype(np.float32) * np.array([5, 3, 1, 1, 1, 1], dtype=np.float32)
    labels, split, poison = rng.integers(0, 7, n), rng.integers(0, 2, n), (rng.random(n) < 0.01).astype(int)
    res = project(z, labels, split, poison, seed=3, projection="pca", density=False)
    rows = np.asarray(res.figures["rows"])
    expected = np.sort(np.random.default_rng(3).choice(n, MAX_POINTS, replace=False))
    np.testing.assert_array_equal(rows, expected)
    assert res.variant["sample"] == MAX_POINTS and res.variant["sampled"] and res.figures["n_rows"] == n
    assert res.figures["labels"] == labels[rows].tolist() and res.figures["split"] == split[rows].tolist()
    assert res.figures["poison"] == poison[rows].tolist()
    pca = res.figures["projections"]["pca"]
    ref = PCA(n_components=2, svd_solver="full").fit(z[rows].astype(np.float64))
    top = np.abs(ref.transform(z[rows].astype(np.float64))).max(axis=0)
    assert_equal_up_to_sign(np.c_[pca["x"], pca["y"]], ref.transform(z[rows].astype(np.float64)),
                            atol=float(top.max()) * 1e-3)  # 4 significant digits of the largest value
    np.testing.assert_allclose(pca["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-6)
    assert res.metrics["projector_pca_variance"] == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-6)
    other = project(z, seed=4, projection="pca", density=False)
    assert other.figures["rows"] != res.figures["rows"]
    assert project(z[:500], seed=4, projection="pca", density=False).figures["rows"] == list(range(500))
    with pytest.raises(ValueError, match="max_points"):
        project(z, max_points=MAX_POINTS + 1)
    with pytest.raises(ValueError, match="projection"):
        project(z, projection="tsne")


def test_payload_is_bounded():
    """At the 20 000-point bound, with labels, split, poison flags, PCA and density: ≤ 64 bytes a point."""
    n = 30_000
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n, 16)).astype(np.float32)
    res = project(z, rng.integers(0, 1000, n), rng.integers(0, 2, n), rng.integers(0, 2, n), projection="pca")
    size = len(json.dumps(res.to_json()))
    assert len(res.figures["rows"]) == MAX_POINTS and len(res.figures["density"]) == MAX_POINTS
    assert size <= 64 * MAX_POINTS, size


def test_density_is_the_pool_scans_and_brute_force():
    from worker.suites.backdoor.knn import knn_density as pool_density

    z, _ = clusters(40, d=8)
    ours = knn_density(z, 20, device="cpu")
    np.testing.assert_array_equal(ours, pool_density(z, 20, device="cpu"))
    u = z.astype(np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    brute = np.sort(sim, axis=1)[:, -20:].mean(axis=1)
    np.testing.assert_allclose(ours, brute, rtol=1e-5)
    res = project(z, projection="pca")
    np.testing.assert_allclose(res.figures["density"], ours, atol=1e-3)
    assert res.figures["density_k"] == 20


def test_umap_when_not_installed(monkeypatch):
    """Without umap-learn: 'auto' draws PCA only, quietly; 'umap' draws PCA only and says why."""
    monkeypatch.setattr(project_module, "umap_available", lambda: False)
    z, _ = clusters(20)
    auto = project(z, density=False)
    assert list(auto.figures["projections"]) == ["pca"] and auto.warnings == []
    asked = project(z, projection="umap", density=False)
    assert list(asked.figures["projections"]) == ["pca"]
    assert "umap-learn is not installed" in asked.warnings[0] and "not installed" in asked.variant["umap"]


def test_umap_auto_size_rule(monkeypatch):
    monkeypatch.setattr(project_module, "umap_available", lambda: True)
    monkeypatch.setattr(project_module, "umap_2d", lambda x, **kw: np.c_[np.arange(len(x)), np.zeros(len(x))])
    small = project(np.random.default_rng(0).standard_normal((50, 4)), density=False)
    assert "umap" in small.figures["projections"] and small.figures["projections"]["umap"]["n_neighbors"] == 15
    big = project(np.random.default_rng(0).standard_normal((UMAP_AUTO_MAX + 1, 4)), density=False)
    assert "umap" not in big.figures["projections"] and "skipped" in big.variant["umap"]
    asked = project(np.random.default_rng(0).standard_normal((UMAP_AUTO_MAX + 1, 4)), projection="umap",
                    density=False)
    assert "umap" in asked.figures["projections"]


def test_a_failing_umap_keeps_the_pca(monkeypatch):
    def broken(x, **kw):
        raise RuntimeError("cannot cache function")

    monkeypatch.setattr(project_module, "umap_available", lambda: True)
    monkeypatch.setattr(project_module, "umap_2d", broken)
    res = project(np.random.default_rng(0).standard_normal((30, 4)), density=False)
    assert list(res.figures["projections"]) == ["pca"] and res.variant["umap"].startswith("failed (RuntimeError")
    assert res.warnings == ["UMAP failed (RuntimeError: cannot cache function); PCA only"]


@pytest.mark.skipif(not os.environ.get("REPSCOPE_SLOW"), reason="numba compiles umap-learn for ~15 s per process; "
                    "make test covers UMAP through tests/browser/test_projector.py (set REPSCOPE_SLOW=1)")
def test_umap_separates_known_clusters():
    """umap-learn (skipped when not installed): three well-separated clusters stay separated, seeded."""
    pytest.importorskip("umap")
    from sklearn.neighbors import KNeighborsClassifier

    z, labels = clusters(60)
    res = project(z, labels, projection="umap", density=False, seed=0)
    u = res.figures["projections"]["umap"]
    xy = np.c_[u["x"], u["y"]]
    assert u["n_neighbors"] == 15 and u["min_dist"] == 0.1 and u["seed"] == 0
    acc = KNeighborsClassifier(5).fit(xy, labels).score(xy, labels)
    assert acc == 1.0
    centres = np.array([xy[labels == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).max() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > spread


# --- the page data (backend/projector.py) ---------------------------------------------------------------------

def figs(labels, density=None, split=None, poison=None):
    n = len(labels)
    out = {"n_rows": n, "rows": list(range(n)), "labels": labels,
           "projections": {"pca": {"x": [0.0] * n, "y": [0.0] * n, "explained_variance_ratio": [0.5, 0.25]}}}
    for k, v in (("density", density), ("split", split), ("poison", poison)):
        if v is not None:
            out[k] = v
    if density is not None:
        out["density_k"] = 20
    return out


def test_colours_are_fixed_per_label_and_shared_by_panels():
    d3 = ["#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22",
          "#17BECF"]  # d3.schemeCategory10
    pages = view.projector_views([("a", figs([2, 0, 12], [0.1, 0.2, 0.3], [0, 1, 0], [0, 0, 1])),
                                  ("b", figs([0, 5], [0.5, 0.9], [1, 1], [0, 0]))])
    assert pages["color_by"] == ["label", "split", "poison", "density"] and pages["projections"] == ["pca"]
    a, b = pages["panels"]
    cats = a["colorings"]["label"]["categories"]
    assert cats == b["colorings"]["label"]["categories"]
    assert [(c["value"], c["color"]) for c in cats] == [(0, d3[0]), (2, d3[2]), (5, d3[5]), (12, d3[2])]
    assert [cats[c]["value"] for c in a["colorings"]["label"]["codes"]] == [2, 0, 12]
    poison = a["colorings"]["poison"]["categories"]
    assert [(c["name"], c["color"]) for c in poison] == [("clean", d3[7]), ("poisoned", d3[3])]
    assert [c["name"] for c in a["colorings"]["split"]["categories"]] == ["train", "test"]
    assert a["colorings"]["density"]["cmin"] == b["colorings"]["density"]["cmin"] == 0.1
    assert a["colorings"]["density"]["cmax"] == 0.9
    assert a["projections"]["pca"]["x_title"] == "PC1 (50.0% of the variance)"
    many = view.projector_views([("m", figs(list(range(view.LEGEND_MAX + 1))))])["panels"][0]
    assert many["colorings"]["label"]["legend"] is False
    unlabelled = view.projector_views([("u", {**figs([0, 1]), "labels": None})])
    assert unlabelled["color_by"] == [] and unlabelled["panels"][0]["labels"] is None


# --- the pages over the real app --------------------------------------------------------------------------------

def upload_projector(api, run_id: int, step: int, z: np.ndarray, labels: np.ndarray) -> int:
    buf = io.BytesIO()
    np.savez(buf, embeddings=z, labels=labels)
    body = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(step), "suites": "projector"},
                    files={"file": ("z.npz", buf.getvalue())}).json()
    eid = body["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "test"}).json()["claim"]
    result = {**project(z, labels, projection="pca").to_json(), "claim": lease}
    assert api.post(f"/api/v1/evaluations/{eid}/result", json=result).status_code == 200
    return eid


def embedded_views(text: str) -> list[dict]:
    return [json.loads(html.unescape(m)) for m in re.findall(r"data-view='([^']*)'", text)]


def test_projector_pages(api, run_id):
    z, labels = clusters(10)
    first = upload_projector(api, run_id, 100, z, labels)
    upload_projector(api, run_id, 300, z[::-1].copy(), labels[::-1].copy())
    page = api.get(f"/evaluations/{first}")
    assert page.status_code == 200 and 'src="/static/vendor/plotly-strict.min.js"' in page.text
    assert "/static/vendor/plotly.min.js" not in page.text and 'src="/static/projector.js"' in page.text
    (panel,) = embedded_views(page.text)
    assert panel["points"] == 30 and panel["labels"] == labels.tolist()
    assert api.get("/static/vendor/plotly-strict.min.js").status_code == 200
    assert api.get("/static/projector.js").status_code == 200
    assert 'src="/static/vendor/plotly.min.js"' in api.get(f"/runs/{run_id}").text  # other pages keep theirs
    assert f'href="/runs/{run_id}/projector"' in api.get(f"/runs/{run_id}").text

    both = api.get(f"/runs/{run_id}/projector")  # default: the first and the last step
    assert both.status_code == 200 and [p["title"] for p in embedded_views(both.text)] == ["step 100", "step 300"]
    one = api.get(f"/runs/{run_id}/projector", params={"steps": "300"})
    assert [p["title"] for p in embedded_views(one.text)] == ["step 300"]
    assert api.get(f"/runs/{run_id}/projector", params={"steps": "a,b"}).status_code == 400
    assert api.get(f"/runs/{run_id}/projector", params={"steps": "1,2,3"}).status_code == 400
    missing = api.get(f"/runs/{run_id}/projector", params={"steps": "100,200"})
    assert missing.status_code == 404 and "no finished projector evaluation at step 200" in missing.text
    assert api.get("/runs/999999/projector").status_code == 404
