"""Run page charts and the runs table's provenance (issue #20): catalogue-fixed axes (fractions 0-100 %), logged
scalars first, an empty state that says what to do, wall times per point, and every table value with the step
it comes from plus a pending marker while a later evaluation is queued."""

from __future__ import annotations

import html

import numpy as np
from sqlalchemy import select

from backend import figures
from backend.models import Project
from backend.services import runs_table as table_service
from repscope import catalogue
from repscope.schemas import MetricPoint, MetricSeries
from tests.unit.test_logged_namespace import post_metrics


def _series(key: str, values: dict[int, float], logged: bool = False) -> MetricSeries:
    return MetricSeries(run_id=1, key=key, source="logged" if logged else "computed",
                        points=[MetricPoint(step=s, value=v, evaluation_id=None if logged else 1)
                                for s, v in values.items()])


def _chart(charts: list[dict], title_part: str) -> dict:
    return next(c for c in charts if title_part in c["layout"]["title"]["text"])


def test_fraction_groups_fixed_at_0_to_100_percent_from_the_catalogue():
    """k-NN values near 1 once autoranged to 0-200 %: every group whose keys are all catalogue fractions gets
    range [0, 1] drawn as %, and a group of non-fractions gets none."""
    series = {"knn20_top1": _series("knn20_top1", {1: 0.95, 2: 0.99}),
              "linear_top1": _series("linear_top1", {1: 0.5, 2: 0.7}),
              "rankme": _series("rankme", {1: 3.0, 2: 9.0})}
    charts, _ = figures.run_charts(series)
    for key in ("knn20_top1", "linear_top1"):
        assert catalogue.is_fraction(key)
        axis = _chart(charts, catalogue.group(key).title)["layout"]["yaxis"]
        assert axis["range"] == [0, 1] and axis["tickformat"] == ".0%"
    assert "range" not in _chart(charts, "Effective rank")["layout"]["yaxis"]
    single = figures.metric_over_step([("r", series["knn20_top1"])], "knn20_top1")
    assert single["layout"]["yaxis"]["range"] == [0, 1]


def test_log_axis_labels_decades_only_over_two_decades():
    spread = figures.run_charts({"condition": _series("condition", {1: 1e-4, 2: 1e-1})})[0][0]["layout"]["yaxis"]
    narrow = figures.run_charts({"condition": _series("condition", {1: 0.2, 2: 0.5})})[0][0]["layout"]["yaxis"]
    assert spread["type"] == "log" and spread["dtick"] == 1
    assert narrow["type"] == "log" and "dtick" not in narrow


def test_logged_scalars_first_of_twelve_keys_and_legend_below():
    """The user's `loss` among 12 keys (11 computed, alphabetically before and after it) is the first chart,
    and no legend sits beside the plot."""
    computed = ["alpha_req", "condition", "knn10_top1", "knn20_top1", "linear_top1", "linear_balanced_acc",
                "rankme", "rankme_centered", "stable_rank", "uniformity", "zzz_custom"]
    series = {k: _series(k, {1: 0.5, 2: 0.6}) for k in computed}
    series["logged:loss"] = _series("logged:loss", {1: 2.0, 2: 1.0}, logged=True)
    assert len(series) == 12
    charts, _ = figures.run_charts(series)
    assert charts[0]["data"][0]["name"] == "logged: loss" and "logged by the training job" in \
        charts[0]["layout"]["title"]["text"]
    assert all(c["layout"]["legend"]["orientation"] == "h" for c in charts)
    assert charts[-1]["data"][0]["name"] == "zzz_custom"  # uncatalogued keys after repscope's groups


def test_headline_line_drawn_solid_others_dotted():
    series = {"linear_top1": _series("linear_top1", {1: 0.5}), "linear_balanced_acc": _series(
        "linear_balanced_acc", {1: 0.5})}
    data = _chart(figures.run_charts(series)[0], "Linear probe accuracy")["data"]
    assert len(data) == 2 and "dash" not in data[0].get("line", {}) and data[1]["line"]["dash"] == "dot"


def test_wall_times_interpolated_between_uploads():
    """Points carry unix seconds: exact at an upload's step, linear in step between uploads (np.interp),
    None outside; every chart's meta.t0 is the run's first time."""
    anchors = {100: 1000.0, 300: 1400.0}
    series = {"logged:loss": _series("logged:loss", {50: 3.0, 100: 2.0, 150: 1.5, 300: 1.0, 400: 0.9}, logged=True),
              "rankme": _series("rankme", {100: 4.0, 300: 5.0})}
    charts, _ = figures.run_charts(series, anchors)
    loss = charts[0]["data"][0]["customdata"]
    ref = np.interp([100, 150, 300], [100, 300], [1000.0, 1400.0])
    assert loss[0] is None and loss[4] is None and np.allclose(loss[1:4], ref)
    assert charts[1]["data"][0]["customdata"] == [1000.0, 1400.0]
    assert all(c["layout"]["meta"]["t0"] == 1000.0 for c in charts)
    assert "customdata" not in figures.run_charts(series)[0][0]["data"][0]  # no anchors, no times


def test_empty_run_page_says_what_to_do(api, run_id):
    fig = figures.empty_run_chart(run_id)
    assert fig["data"] == [] and fig["layout"]["xaxis"]["visible"] is False
    page = api.get(f"/runs/{run_id}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "No metrics yet" in text and f"/api/v1/runs/{run_id}/metrics" in text
    assert '"xaxis": {"visible": false}' in text  # no blank -1...6 axis


def test_runs_table_values_carry_their_step_and_pending_marker(api, app):
    """Run a: RankMe 5 @100, 8 @200, 6 @300; then an evaluation at step 400 queued (never claimed). Latest mode
    shows 6 @300 pending; best mode shows 8 @200 (RankMe: higher is better); run b has no queued work."""
    a = api.post("/api/v1/runs", json={"project": "stale", "name": "a"}).json()["id"]
    b = api.post("/api/v1/runs", json={"project": "stale", "name": "b"}).json()["id"]
    for step, value in ((100, 5.0), (200, 8.0), (300, 6.0)):
        post_metrics(api, a, step, {"rankme": value, "uniformity": -value})
    post_metrics(api, b, 100, {"rankme": 7.0})
    queued = api.post(f"/api/v1/runs/{a}/artifacts", data={"step": "400", "suites": "spectrum"},
                      files={"file": ("z.npy", _npy())})
    assert queued.status_code == 202
    with app.state.sessionmaker() as session:
        pid = session.scalar(select(Project.id).where(Project.name == "stale"))
        latest = table_service.runs_table(session, pid, columns=("rankme", "uniformity", "linear_top1"))
        assert latest.values[a]["rankme"] == 6.0 and latest.steps[a]["rankme"] == 300
        assert latest.pending_step[a] == {"spectrum": 400} and latest.pending(a, "rankme") == 400
        assert latest.pending(b, "rankme") is None and latest.pending(a, "linear_top1") is None  # probes: not queued
        best = table_service.runs_table(session, pid, columns=("rankme", "uniformity"), mode="best", sort="rankme")
        assert best.values[a]["rankme"] == 8.0 and best.steps[a]["rankme"] == 200
        assert catalogue.direction("uniformity") == "lower"
        assert best.values[a]["uniformity"] == -8.0 and best.steps[a]["uniformity"] == 200
        assert [r.name for r in best.runs] == ["a", "b"]  # best RankMe 8 > 7 (latest would be 6 < 7)
        by_latest = table_service.runs_table(session, pid, sort="rankme")
        assert [r.name for r in by_latest.runs] == ["b", "a"]
    page = html.unescape(api.get("/projects/stale").text)
    assert "@300" in page and "pending @400" in page
    assert "@200" in html.unescape(api.get("/projects/stale?mode=best").text)


def _npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    return buf.getvalue()
