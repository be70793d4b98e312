"""Leaderboards (Borda, pick=best|last, CSV/JSON export), metric directions, and the rank correlations of the
label-free selection view (checked against scipy.stats)."""

from __future__ import annotations

import csv
import io
import itertools
import math

import numpy as np
import pytest

from backend.services import leaderboards as lb
from backend.services.selection import average_ranks, kendall_tau_b, spearman_rho


def post_metrics(api, run_id: int, step: int, metrics: dict[str, float], *, dataset: str | None = None,
                 worker: str = "test", variant: dict | None = None, figures: dict | None = None) -> int:
    """Upload a small embeddings file at `step` and finish its spectrum evaluation with the given metrics (the
    worker's side of the API, so every row goes through the real endpoints)."""
    z = np.random.default_rng(run_id * 100_003 + step).standard_normal((8, 4)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, z)
    data = {"step": str(step), "suites": "spectrum", **({"dataset": dataset} if dataset else {})}
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data=data, files={"file": ("z.npy", buf.getvalue())})
    assert response.status_code == 202, response.text
    eid = response.json()["evaluations"][0]["id"]
    claimed = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": worker})
    assert claimed.status_code == 200
    body = {"claim": claimed.json()["claim"], "metrics": metrics, "variant": variant or {}, "figures": figures or {}}
    assert api.post(f"/api/v1/evaluations/{eid}/result", json=body).status_code == 200
    return eid


def make_run(api, name: str, project: str = "board", **extra) -> int:
    response = api.post("/api/v1/runs", json={"project": project, "name": name, **extra})
    assert response.status_code in (200, 201)
    return response.json()["id"]


# --- directions -------------------------------------------------------------------------------------------

def test_direction_table():
    assert lb.direction("rankme") == "higher" and lb.direction("linear_top1") == "higher"
    assert lb.direction("condition") == "higher"  # the *inverse* condition number σ_min/σ_max
    assert lb.direction("uniformity") == "lower" and lb.direction("backdoor_risk") == "lower"
    assert lb.direction("openset_fpr95_msp") == "lower" and lb.direction("openset_auroc_msp") == "higher"
    assert lb.direction("uniformity@d16") == "lower" and lb.direction("rankme@d64") == "higher"
    assert lb.direction("alpha_req") == "target" and lb.score("alpha_req", 1.2) == pytest.approx(-0.2)
    assert lb.direction("linear_best_c") == "none" and lb.score("linear_best_c", 3.0) is None
    assert lb.score("backdoor_risk", 0.25) == -0.25 and lb.score("rankme", None) is None
    assert any(r["pattern"] == "openset_fpr95_*" for r in lb.directions_table())


# --- Borda ------------------------------------------------------------------------------------------------

def brute_force_points(values: list[float | None], key: str) -> list[float]:
    """The definition, pair by pair: beat = 1, tie = ½, a value beats a missing value."""
    out = []
    for i, a in enumerate(values):
        total = 0.0
        for j, b in enumerate(values):
            if i == j or a is None:
                continue
            if b is None:
                total += 1
                continue
            sa, sb = lb.score(key, a), lb.score(key, b)
            total += 1.0 if sa > sb else (0.5 if sa == sb else 0.0)
        out.append(total)
    return out


@pytest.mark.parametrize("key", ["rankme", "openset_fpr95_knn", "alpha_req"])
def test_borda_points_match_the_pairwise_definition(key):
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        values = [None if rng.random() < 0.2 else float(rng.integers(0, 4)) / 2 for _ in range(n)]
        assert lb.borda_points(values, key) == brute_force_points(values, key)
    assert lb.borda_points([1.0, 2.0], "linear_best_c") == [0.0, 0.0]  # no direction: not counted


def test_competition_ranks():
    assert lb.competition_ranks([3.0, 5.0, 3.0, 1.0]) == [2, 1, 2, 4]


def test_leaderboard_borda_ties_missing_and_directions(api):
    # rankme (higher better): a 10, b 10 (tie), c 5; fpr (lower better): a 0.3, b missing, c 0.1
    a, b, c = (make_run(api, n) for n in ("a", "b", "c"))
    post_metrics(api, a, 100, {"rankme": 10.0, "openset_fpr95_knn": 0.3}, dataset="cifar")
    post_metrics(api, b, 100, {"rankme": 10.0}, dataset="cifar")
    post_metrics(api, c, 100, {"rankme": 5.0, "openset_fpr95_knn": 0.1}, dataset="cifar")
    post_metrics(api, c, 200, {"rankme": 1000.0}, dataset="other")  # another dataset: not on this board
    body = api.get("/api/v1/leaderboards/cifar", params={"metric": ["rankme", "openset_fpr95_knn"]}).json()
    rows = {r["run"]: r for r in body["rows"]}
    # rankme: a beats c (1) + ties b (0.5); b the same; c beats nobody.  fpr: c beats a (1) and missing b (1);
    # a beats missing b (1); b nothing.
    assert rows["a"]["points"] == {"rankme": 1.5, "openset_fpr95_knn": 1.0}
    assert rows["b"]["points"] == {"rankme": 1.5, "openset_fpr95_knn": 0.0}
    assert rows["c"]["points"] == {"rankme": 0.0, "openset_fpr95_knn": 2.0}
    assert [(r["run"], r["borda"], r["rank"]) for r in body["rows"]] == [("a", 2.5, 1), ("c", 2.0, 2), ("b", 1.5, 3)]
    assert rows["b"]["values"]["openset_fpr95_knn"] is None and rows["c"]["step"] == 100
    assert body["directions"] == {"rankme": "higher", "openset_fpr95_knn": "lower"}
    assert any(r["pattern"] == "openset_fpr95_*" for r in body["direction_rules"])
    # sort by a lower-is-better metric: best (smallest) first, missing last
    by_fpr = api.get("/api/v1/leaderboards/cifar",
                     params={"metric": ["rankme", "openset_fpr95_knn"], "sort": "openset_fpr95_knn"}).json()
    assert [r["run"] for r in by_fpr["rows"]] == ["c", "a", "b"]
    worst_first = api.get("/api/v1/leaderboards/cifar", params={"metric": ["openset_fpr95_knn"],
                                                                "sort": "openset_fpr95_knn", "order": "asc"}).json()
    assert [r["run"] for r in worst_first["rows"]] == ["a", "c"]  # b has none of the chosen metrics: no row


def test_pick_best_and_last(api):
    r1, r2 = make_run(api, "peaks"), make_run(api, "climbs")
    for step, acc, rank in ((10, 0.5, 3.0), (20, 0.9, 4.0), (30, 0.7, 6.0)):
        post_metrics(api, r1, step, {"linear_top1": acc, "rankme": rank}, dataset="val")
    for step, acc in ((10, 0.6), (20, 0.8), (30, 0.8)):
        post_metrics(api, r2, step, {"linear_top1": acc, "rankme": 5.0}, dataset="val")
    params = {"metric": ["linear_top1", "rankme"]}
    last = {r["run"]: r for r in api.get("/api/v1/leaderboards/val", params={**params, "pick": "last"}).json()["rows"]}
    assert last["peaks"]["step"] == 30 and last["peaks"]["values"] == {"linear_top1": 0.7, "rankme": 6.0}
    assert last["climbs"]["step"] == 30
    best = api.get("/api/v1/leaderboards/val", params={**params, "pick": "best"}).json()
    assert best["by"] == "linear_top1"
    rows = {r["run"]: r for r in best["rows"]}
    assert rows["peaks"]["step"] == 20 and rows["peaks"]["values"] == {"linear_top1": 0.9, "rankme": 4.0}
    assert rows["climbs"]["step"] == 20  # tie at 0.8: the earliest step
    by_rank = api.get("/api/v1/leaderboards/val", params={**params, "pick": "best", "by": "rankme"}).json()
    assert {r["run"]: r["step"] for r in by_rank["rows"]} == {"peaks": 30, "climbs": 10}


def test_csv_export_matches_json(api):
    runs = [make_run(api, f"run,{i}") for i in range(3)]  # a comma in the name: CSV quoting
    for i, rid in enumerate(runs):
        post_metrics(api, rid, 5, {"rankme": 1.0 + i / 3, "linear_top1": 0.1 * (3 - i)})
    params = {"metric": ["rankme", "linear_top1"], "format": "csv"}
    response = api.get(f"/api/v1/leaderboards/{lb.NO_DATASET}", params=params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text)))
    body = api.get(f"/api/v1/leaderboards/{lb.NO_DATASET}", params={**params, "format": "json"}).json()
    assert [r["run"] for r in table] == [r["run"] for r in body["rows"]] and table[0]["run"].startswith("run,")
    for row, ref in zip(table, body["rows"], strict=True):
        assert int(row["rank"]) == ref["rank"] and float(row["borda"]) == ref["borda"]
        assert float(row["rankme"]) == ref["values"]["rankme"]  # full precision (repr)
    assert list(table[0]) == ["rank", "borda", "project", "run", "run_id", "step", "rankme", "linear_top1"]


def test_leaderboard_api_input_errors_and_index(api):
    rid = make_run(api, "x")
    post_metrics(api, rid, 1, {"rankme": 2.0}, dataset="imagenet")
    assert api.get("/api/v1/leaderboards/imagenet", params={"pick": "median"}).status_code == 422
    assert api.get("/api/v1/leaderboards/imagenet", params={"format": "xml"}).status_code == 422
    empty = api.get("/api/v1/leaderboards/nothing-here").json()
    assert empty["rows"] == [] and empty["metrics"] == []
    default = api.get("/api/v1/leaderboards/imagenet").json()
    assert default["metrics"] == ["rankme"] and default["rows"][0]["rank"] == 1
    index = api.get("/api/v1/leaderboards").json()
    assert {"project": "board", "dataset": "imagenet", "runs": 1, "artifacts": 1} in index  # one per (project, name)


# --- rank correlations --------------------------------------------------------------------------------------

def _cases():
    rng = np.random.default_rng(7)
    yield [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]
    yield [1.0, 1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0, 3.0]
    for _ in range(60):
        n = int(rng.integers(2, 40))
        x = rng.standard_normal(n) if rng.random() < 0.5 else rng.integers(0, 4, n).astype(float)
        y = x * rng.normal() + rng.standard_normal(n) if rng.random() < 0.5 else rng.integers(0, 3, n).astype(float)
        yield x.tolist(), y.tolist()


@pytest.mark.parametrize(("x", "y"), list(_cases()))
def test_spearman_and_kendall_match_scipy(x, y):
    stats = pytest.importorskip("scipy.stats")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho_ref = stats.spearmanr(x, y).statistic
        tau_ref = stats.kendalltau(x, y, variant="b").statistic
    rho, tau = spearman_rho(x, y), kendall_tau_b(x, y)
    assert (rho is None) == bool(np.isnan(rho_ref)) and (tau is None) == bool(np.isnan(tau_ref))
    if rho is not None:
        assert math.isclose(rho, rho_ref, abs_tol=1e-12)
    if tau is not None:
        assert math.isclose(tau, tau_ref, abs_tol=1e-12)


def test_rank_correlations_edge_cases_and_scale():
    stats = pytest.importorskip("scipy.stats")
    assert average_ranks([10.0, 20.0, 10.0, 30.0]) == [1.5, 3.0, 1.5, 4.0]
    assert spearman_rho([1.0], [2.0]) is None and kendall_tau_b([1.0], [2.0]) is None
    assert spearman_rho([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant x: undefined (scipy: NaN)
    assert kendall_tau_b([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) is None
    rng = np.random.default_rng(3)
    x = rng.integers(0, 50, 20_000).astype(float)
    y = x + rng.integers(0, 30, 20_000)
    # O(n log n): 20 000 checkpoints in well under a second of pure Python
    assert math.isclose(kendall_tau_b(x.tolist(), y.tolist()), stats.kendalltau(x, y).statistic, abs_tol=1e-12)
    assert math.isclose(spearman_rho(x.tolist(), y.tolist()), stats.spearmanr(x, y).statistic, abs_tol=1e-12)


def test_kendall_counts_every_pair():
    """A brute-force tau-b over all pairs, independent of scipy."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        n = int(rng.integers(2, 15))
        x, y = rng.integers(0, 3, n).tolist(), rng.integers(0, 3, n).tolist()
        c = d = tx = ty = 0
        for i, j in itertools.combinations(range(n), 2):
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            c += sx * sy > 0
            d += sx * sy < 0
            tx += sx == 0 and sy != 0
            ty += sy == 0 and sx != 0
        denom = math.sqrt((c + d + tx) * (c + d + ty))
        expected = None if denom == 0 else (c - d) / denom
        got = kendall_tau_b(x, y)
        assert (got is None and expected is None) or math.isclose(got, expected, abs_tol=1e-12)
