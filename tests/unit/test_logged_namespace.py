"""Scalars a training job logs (POST /runs/{id}/metrics) live in their own namespace: a logged "rankme" never
replaces the computed RankMe on the runs table, selection, compare, leaderboard, run page or REST read — on
SQLite and PostgreSQL, at the same step and at a later step — and is shown beside it as "logged: rankme".

The construction: computed metrics are posted through the worker's endpoints with known values; the job logs
the same names with values that would change every view if they were mixed in (larger, smaller, later)."""

from __future__ import annotations

import html
import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.models import Project, Run
from backend.services import compare as compare_service
from backend.services import leaderboards as lb
from backend.services import runs_table as table_service
from backend.services import selection as selection_service
from backend.services.metrics import default_source, in_catalogue, split_key
from tests.conftest import ADMIN_HEADERS, database_url
from tests.unit.test_leaderboards import make_run

# computed (evaluations): run -> step -> metrics
COMPUTED = {
    "a": {100: {"rankme": 5.0, "linear_top1": 0.50}, 200: {"rankme": 8.0, "linear_top1": 0.70}},
    "b": {100: {"rankme": 6.0, "linear_top1": 0.60}, 200: {"rankme": 9.0, "linear_top1": 0.65}},
    "c": {100: {"rankme": 4.0}},
}
# logged by the training job: same step (100, 200) with other values, and a later step (300) than any evaluation
LOGGED = {
    "a": {100: {"rankme": 99.0, "loss": 2.0}, 200: {"rankme": 1.0, "linear_top1": 0.99, "loss": 1.5},
          300: {"rankme": 50.0, "loss": 1.0}},
    "c": {100: {"rankme": 40.0}},
}


def post_metrics(api, run_id: int, step: int, metrics: dict[str, float]) -> None:
    """Upload a small embeddings file at `step` and finish its evaluation with `metrics` (the worker's endpoints,
    with the lease's claim id when the server issues one)."""
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(run_id * 1000 + step).standard_normal((8, 4)).astype(np.float32))
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(step), "suites": "spectrum"},
                        files={"file": ("z.npy", buf.getvalue())})
    assert response.status_code == 202, response.text
    eid = response.json()["evaluations"][0]["id"]
    claim = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "test"})
    assert claim.status_code == 200, claim.text
    lease = {"claim": claim.json()["claim"]} if "claim" in claim.json() else {}
    result = api.post(f"/api/v1/evaluations/{eid}/result", json={"metrics": metrics, **lease})
    assert result.status_code == 200, result.text


@pytest.fixture(params=["sqlite", "postgresql"])
def collide(request, tmp_path, settings):
    """The real app (SQLite file, or a fresh PostgreSQL database) with COMPUTED and LOGGED stored through the API."""
    from backend.app import create_app

    with database_url(request.param) as url:
        if url:
            settings = settings.model_copy(update={"database_url": url})
        app = create_app(settings, run_sweeper=False)
        try:
            with TestClient(app, headers=ADMIN_HEADERS) as api:
                ids = {name: make_run(api, name, project="collide") for name in COMPUTED}
                for name, steps in COMPUTED.items():
                    for step, metrics in steps.items():
                        post_metrics(api, ids[name], step, metrics)
                for name, steps in LOGGED.items():
                    for step, metrics in steps.items():
                        response = api.post(f"/api/v1/runs/{ids[name]}/metrics", json={"step": step, "metrics": metrics})
                        assert response.status_code == 201, response.text
                yield app, api, ids
        finally:
            app.state.engine.dispose()


def _series(api, run_id: int, key: str, **params) -> tuple[str, list[tuple[int, float]]]:
    response = api.get(f"/api/v1/runs/{run_id}/metrics", params={"key": key, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["source"], [(p["step"], p["value"]) for p in body["points"]]


def test_rest_read_takes_a_source(collide):
    _, api, ids = collide
    a = ids["a"]
    assert _series(api, a, "rankme") == ("computed", [(100, 5.0), (200, 8.0)])  # catalogue key: computed
    assert _series(api, a, "rankme", source="logged") == ("logged", [(100, 99.0), (200, 1.0), (300, 50.0)])
    assert _series(api, a, "loss") == ("logged", [(100, 2.0), (200, 1.5), (300, 1.0)])  # not computed: logged
    assert _series(api, a, "loss", source="computed") == ("computed", [])
    assert api.get(f"/api/v1/runs/{a}/metrics", params={"source": "logged"}).json() == ["linear_top1", "loss",
                                                                                       "rankme"]
    assert api.get(f"/api/v1/runs/{a}/metrics", params={"source": "computed"}).json() == ["linear_top1", "rankme"]
    bad = api.get(f"/api/v1/runs/{a}/metrics", params={"key": "rankme", "source": "both"})
    assert bad.status_code == 422 and "source" in bad.json()["detail"]
    # logging the same step again replaces the logged value only, never the computed one
    assert api.post(f"/api/v1/runs/{a}/metrics", json={"step": 200, "metrics": {"rankme": 2.0}}).status_code == 201
    assert _series(api, a, "rankme") == ("computed", [(100, 5.0), (200, 8.0)])
    assert _series(api, a, "rankme", source="logged")[1] == [(100, 99.0), (200, 2.0), (300, 50.0)]


def test_default_source_rule(collide):
    app, _, ids = collide
    assert in_catalogue("rankme") and in_catalogue("knn20_top5") and in_catalogue("rankme@d64")
    assert in_catalogue("openset_auroc_msp") and not in_catalogue("loss") and not in_catalogue("val_auroc")
    with app.state.sessionmaker() as session:
        assert default_source(session, ids["c"], "rankme") == "computed"
        assert default_source(session, ids["a"], "loss") == "logged"
        assert default_source(session, ids["a"], "linear_top1") == "computed"
    assert split_key("logged:logged:x") == ("logged:x", "logged")


def test_runs_table_shows_computed_and_logged_beside(collide):
    app, api, ids = collide
    with app.state.sessionmaker() as session:
        project_id = session.scalar(select(Project.id).where(Project.name == "collide"))
        table = table_service.runs_table(session, project_id, sort="rankme")
        assert [r.name for r in table.runs] == ["b", "a", "c"]  # by computed latest RankMe: 9, 8, 4
        assert table.columns[:2] == ["rankme", "logged:rankme"]  # the logged column right beside
        values = {r.name: table.values[r.id] for r in table.runs}
        assert values["a"]["rankme"] == 8.0 and values["a"]["logged:rankme"] == 50.0  # later logged step
        assert values["c"]["rankme"] == 4.0 and values["c"]["logged:rankme"] == 40.0  # same step
        assert values["b"]["rankme"] == 9.0 and "logged:rankme" not in values["b"]
        assert values["a"]["linear_top1"] == 0.70 and values["a"]["logged:linear_top1"] == 0.99
        by_logged = table_service.runs_table(session, project_id, sort="logged:rankme")
        assert [r.name for r in by_logged.runs] == ["a", "c", "b"]  # 50, 40, none last
        keys = table_service.project_metric_keys(session, project_id)
        assert keys == ["linear_top1", "rankme", "logged:linear_top1", "logged:loss", "logged:rankme"]

    page = api.get("/projects/collide", params={"sort": "rankme"})
    assert page.status_code == 200
    cells = dict(re.findall(r'<td class="num" data-key="(rankme|logged:rankme)">([^<]*?) ?<', page.text)[:2])
    assert cells == {"rankme": "9.000", "logged:rankme": "—"}  # run b first
    assert ">logged: rankme</a>" in page.text and 'value="logged:loss"' in page.text


def test_selection_pairs_are_computed_and_logged_is_its_own_row(collide):
    stats = pytest.importorskip("scipy.stats")
    app, api, ids = collide
    with app.state.sessionmaker() as session:
        project = session.get(Project, session.get(Run, ids["a"]).project_id)
        results = {a.key: a for a in selection_service.selection(session, project, "linear_top1")}
    assert set(results) == {"rankme", "logged:rankme"}
    computed = results["rankme"]
    xs = [5.0, 8.0, 6.0, 9.0]
    ys = [0.50, 0.70, 0.60, 0.65]
    assert sorted((p.x, p.y) for p in computed.pairs) == sorted(zip(xs, ys, strict=True))
    assert computed.rho == pytest.approx(stats.spearmanr(xs, ys).statistic)
    assert computed.agree == 2 and computed.runs == 2  # both runs: best RankMe step is the best probe step
    logged = results["logged:rankme"]
    assert sorted((p.step, p.x, p.y) for p in logged.pairs) == [(100, 99.0, 0.50), (200, 1.0, 0.70)]
    assert logged.runs == 0  # a logged scalar has no known direction: no picks
    page = api.get("/projects/collide/selection", params={"probe": "linear_top1"})
    assert 'data-key="logged:rankme"><td>logged: rankme</td>' in page.text
    assert page.text.count('data-key="rankme"') == 1
    refused = api.get("/projects/collide/selection", params={"probe": "logged:linear_top1"})
    assert "linear_top1" in refused.text and 'value="logged:linear_top1"' not in refused.text


def test_compare_keeps_logged_curves_and_rows_apart(collide):
    app, api, ids = collide
    with app.state.sessionmaker() as session:
        comparison = compare_service.compare(session, [ids["a"], ids["b"]])
    rows = {d.name: d for d in comparison.diff if d.section == "metric"}
    assert rows["rankme"].values == [8.0, 9.0] and rows["rankme"].steps == [200, 200]
    assert rows["logged:rankme"].values == [50.0, None] and rows["logged:rankme"].steps == [300, None]
    a_series = comparison.series[ids["a"]]
    assert [(p.step, p.value) for p in a_series["rankme"].points] == [(100, 5.0), (200, 8.0)]
    assert [(p.step, p.value) for p in a_series["logged:rankme"].points] == [(100, 99.0), (200, 1.0), (300, 50.0)]

    page = api.get("/compare", params=[("run", ids["a"]), ("run", ids["b"])])
    figures = [json.loads(html.unescape(m)) for m in re.findall(r"data-figure='([^']*)'", page.text)]
    by_title = {f["layout"]["title"]["text"]: f for f in figures}
    rankme = by_title["RankMe (effective rank) over training"]
    assert {t["name"]: t["y"] for t in rankme["data"]} == {"a": [5.0, 8.0], "b": [6.0, 9.0]}
    assert {t["name"]: t["y"] for t in by_title["logged: rankme over training"]["data"]} == {"a": [99.0, 1.0, 50.0]}
    assert re.search(r'data-name="logged:rankme"[^>]*>\s*<th scope="row">logged: rankme ', page.text)


def test_leaderboard_ranks_computed_values_only(collide):
    app, api, ids = collide
    with app.state.sessionmaker() as session:
        board = lb.leaderboard(session, lb.NO_DATASET, ["rankme", "linear_top1"], project="collide")
    rows = {r.run: (r.step, r.values) for r in board.rows}
    assert rows == {"a": (200, {"rankme": 8.0, "linear_top1": 0.70}), "b": (200, {"rankme": 9.0, "linear_top1": 0.65}),
                    "c": (100, {"rankme": 4.0, "linear_top1": None})}
    assert lb.direction("logged:uniformity") == "none" and lb.direction("uniformity") == "lower"
    body = api.get(f"/api/v1/leaderboards/{lb.NO_DATASET}", params={"metric": "rankme", "project": "collide"}).json()
    assert {r["run"]: r["values"]["rankme"] for r in body["rows"]} == {"a": 8.0, "b": 9.0, "c": 4.0}


def test_run_page_shows_logged_charts_first_and_computed_unmixed(collide):
    _, api, ids = collide
    page = api.get(f"/runs/{ids['a']}")
    figures = [json.loads(html.unescape(m)) for m in re.findall(r"data-figure='([^']*)'", page.text)]
    titles = [f["layout"]["title"]["text"] for f in figures]
    logged_titles = [t for t in titles if t.startswith("logged: ")]
    assert titles[:len(logged_titles)] == logged_titles and len(logged_titles) == 3  # linear_top1, loss, rankme
    by_title = {f["layout"]["title"]["text"]: f for f in figures}
    logged = by_title["logged: rankme over training (logged by the training job)"]["data"][0]
    assert (logged["x"], logged["y"]) == ([100, 200, 300], [99.0, 1.0, 50.0])
    effective = next(f for t, f in by_title.items() if t.startswith("Effective rank"))
    assert [(t["name"], t["x"], t["y"]) for t in effective["data"]] == [("RankMe (effective rank)", [100, 200],
                                                                         [5.0, 8.0])]
    live = api.get(f"/runs/{ids['a']}/live").json()
    assert [c["layout"]["title"]["text"] for c in live["charts"]] == titles


def test_catalogue_covers_what_the_spectrum_and_probe_suites_compute():
    from worker.suites.probes import run_probes
    from worker.suites.spectrum import run_spectrum

    rng = np.random.default_rng(0)
    z = rng.standard_normal((120, 32)).astype(np.float32)
    keys = [*run_spectrum(z, device="cpu").metrics,
            *run_probes(z, np.arange(120) % 6, device="cpu", c_grid=[1.0]).metrics]
    assert len(keys) > 20 and all(in_catalogue(k) for k in keys), [k for k in keys if not in_catalogue(k)]
