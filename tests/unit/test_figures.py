"""Figure builders: the Plotly JSON the pages embed, checked against the data it must show."""

from __future__ import annotations

import json
import math

import numpy as np

from backend import figures
from repscope.schemas import MetricPoint, MetricSeries
from worker.suites.spectrum import run_spectrum


def spectrum_result():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, 128)) * (0.95 ** np.arange(128))
    return run_spectrum(z.astype(np.float32), device="cpu")


def test_metric_over_step_lines_per_run():
    series = MetricSeries(run_id=1, key="rankme", points=[
        MetricPoint(step=s, value=v, evaluation_id=i) for i, (s, v) in enumerate([(10, 1.5), (20, 2.5)])])
    fig = figures.metric_over_step([("lr0.3", series)], "rankme")
    assert fig["data"][0]["x"] == [10, 20] and fig["data"][0]["y"] == [1.5, 2.5]
    assert fig["data"][0]["name"] == "lr0.3"
    assert fig["layout"]["xaxis"]["title"]["text"] == "training step"
    assert "RankMe" in fig["layout"]["yaxis"]["title"]["text"]


def test_spectrum_charts_show_the_suite_output():
    result = spectrum_result().to_json()
    charts = figures.spectrum_charts(result["figures"])
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles[0] == "Singular-value spectrum" and titles[1] == "Cumulative explained variance"
    assert titles[2].startswith("α-ReQ") and f"{result['metrics']['alpha_req']:.3f}" in titles[2]
    assert titles[3].startswith("Metrics of nested prefixes")
    sv = result["figures"]["singular_values"]
    assert charts[0]["data"][0]["y"] == [s for s in sv if s > 0]
    assert charts[0]["layout"]["yaxis"]["type"] == "log"
    cumulative = charts[1]["data"][0]["y"]
    assert math.isclose(cumulative[-1], 1.0, rel_tol=1e-9) and all(np.diff(cumulative) >= -1e-12)
    nested = charts[3]["data"][0]
    assert nested["x"] == sorted(result["figures"]["matryoshka"]["dims"])
    assert nested["y"][-1] == result["metrics"]["rankme"]  # the widest prefix is the full matrix
    assert nested["y"][0] == result["metrics"]["rankme@d16"]
    json.dumps(charts)  # the page embeds them as JSON


def test_alpha_fit_line_spans_the_fit_range():
    fig = spectrum_result().figures["alpha_fit"]
    chart = figures.alpha_req_fit(fig)
    first, last = fig["range"]
    line = chart["data"][1]
    assert len(line["x"]) == last - first + 1
    np.testing.assert_allclose(line["y"], np.asarray(fig["fit_line"][first - 1:last]))


def test_missing_figure_data_gives_no_chart():
    assert figures.alpha_req_fit({}) is None
    assert figures.matryoshka({"dims": [64]}) is None
    assert figures.spectrum_charts({}) == []


# --- dashboard charts ---------------------------------------------------------------------------------------

def _series(key: str, points: list[tuple[int, float]]) -> MetricSeries:
    return MetricSeries(run_id=1, key=key, points=[MetricPoint(step=s, value=v, evaluation_id=i)
                                                   for i, (s, v) in enumerate(points)])


def assert_readable(fig: dict) -> None:
    """Every chart: a title, axis titles (or a polar radial title), and a hover template on every trace."""
    layout = fig["layout"]
    assert layout["title"]["text"].strip()
    if "polar" in layout:
        assert layout["polar"]["radialaxis"]["title"]["text"].strip()
    else:
        assert layout["xaxis"]["title"]["text"].strip() and layout["yaxis"]["title"]["text"].strip()
    for trace in fig["data"]:
        assert trace.get("hovertemplate") or trace.get("hoverinfo") == "skip"
    json.dumps(fig)


def test_run_charts_group_every_key():
    keys = {"rankme": [(1, 3.0), (2, 5.0)], "nesum": [(1, 2.0)], "linear_top1": [(1, 0.5)], "linear_top5": [(1, 0.9)],
            "knn200_top1": [(1, 0.3)], "knn20_top1": [(1, 0.4)], "openset_auroc_msp": [(1, 0.7)],
            "openset_fpr95_msp": [(1, 0.6)], "condition": [(1, 0.01)], "backdoor_risk": [(2, 0.2)],
            "equi_mrr_mean": [(2, 0.4)], "linear_best_c": [(1, 10.0)], "new_metric": [(1, 1.0)],
            "rankme@d16": [(1, 1.5)], "rankme@d64": [(1, 2.5)], "nesum@d16": [(1, 1.0)]}
    charts, nested = figures.run_charts({k: _series(k, v) for k, v in keys.items()})
    by_title = {c["layout"]["title"]["text"]: c for c in charts}
    rank = charts[0]
    assert [t["name"] for t in rank["data"]] == ["RankMe (effective rank)", "NESum"]
    assert rank["data"][0]["x"] == [1, 2] and rank["data"][0]["y"] == [3.0, 5.0]
    knn = by_title["k-NN accuracy over training"]
    assert [t["name"] for t in knn["data"]] == ["20-NN top-1", "200-NN top-1"]
    assert knn["layout"]["yaxis"]["tickformat"] == ".0%" and "%{y:.2%}" in knn["data"][0]["hovertemplate"]
    assert by_title["Inverse condition number over training"]["layout"]["yaxis"]["type"] == "log"
    assert "new_metric over training" in by_title
    drawn = sorted(t["hovertemplate"].split("<br>")[0] for c in charts for t in c["data"])
    assert len(drawn) == len(keys) - 3  # every non-nested key drawn exactly once
    assert [c["layout"]["title"]["text"].split(" of nested")[0] for c in nested] == ["RankMe (effective rank)", "NESum"]
    assert [t["name"] for t in nested[0]["data"]] == ["full D", "d = 64", "d = 16"]
    for c in charts + nested:
        assert_readable(c)
        assert c["layout"]["xaxis"]["title"]["text"] == "training step"


def test_overlaid_spectra_normalise_by_the_top_singular_value():
    fig = figures.overlaid_spectra([("a", 10, [4.0, 2.0, 1.0, 0.0]), ("b", 20, [10.0, 1.0])])
    assert [t["name"] for t in fig["data"]] == ["a (step 10)", "b (step 20)"]
    assert fig["data"][0]["y"] == [1.0, 0.5, 0.25] and fig["data"][0]["customdata"] == [4.0, 2.0, 1.0]
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert_readable(fig)


def test_radar_scales_each_axis_by_direction():
    from backend.services.leaderboards import score

    runs = [("a", {"rankme": 10.0, "uniformity": -3.0, "alpha_req": 1.5, "linear_top1": None}),
            ("b", {"rankme": 20.0, "uniformity": -1.0, "alpha_req": 0.9, "linear_top1": 0.5}),
            ("c", {"rankme": 15.0, "uniformity": -2.0, "alpha_req": 1.0, "linear_top1": 0.5})]
    fig = figures.radar(runs, ["rankme", "uniformity", "alpha_req", "linear_top1", "absent"], score)
    r = {t["name"]: t["r"][:-1] for t in fig["data"]}
    assert r["a"] == [0.0, 1.0, 0.0, 0.0] and r["b"] == [1.0, 0.0, 0.8, 1.0] and r["c"] == [0.5, 0.5, 1.0, 1.0]
    assert fig["data"][0]["text"][3] == "missing" and fig["data"][0]["theta"][0] == fig["data"][0]["theta"][-1]
    assert_readable(fig)
    assert figures.radar(runs, ["rankme", "uniformity"], score) is None  # fewer than 3 axes


def test_selection_scatter_reports_rank_correlations():
    points = [("a", 1, 1.0, 0.1), ("a", 2, 2.0, 0.3), ("b", 1, 1.5, 0.2)]
    fig = figures.selection_scatter("rankme", "linear_top1", points, 0.5, 1 / 3)
    assert "Spearman ρ = 0.500" in fig["layout"]["title"]["text"] and "Kendall τ-b = 0.333" in fig["layout"]["title"]["text"]
    assert [t["name"] for t in fig["data"]] == ["a", "b"] and fig["data"][0]["customdata"] == [1, 2]
    assert fig["layout"]["yaxis"]["tickformat"] == ".0%"
    assert_readable(fig)
    many = [(f"r{i}", s, float(i), 0.5) for i in range(20) for s in (1, 2)]
    fig = figures.selection_scatter("rankme", "linear_top1", many, None, None)
    assert len(fig["data"]) == 1 and len(fig["data"][0]["x"]) == 40 and "undefined" in fig["layout"]["title"]["text"]
    assert_readable(fig)


def test_existing_charts_are_readable():
    result = spectrum_result().to_json()
    for chart in figures.spectrum_charts(result["figures"]):
        assert_readable(chart)
    assert_readable(figures.metric_over_step([("r", _series("linear_top1", [(1, 0.5)]))], "linear_top1"))


def test_equivariance_and_backdoor_charts_show_the_suite_output():
    from worker.suites.backdoor import image_figure
    from worker.suites.equivariance import run_equivariance

    images = (np.random.default_rng(0).random((40, 32, 32, 3)) * 255).astype(np.uint8)
    result = run_equivariance(lambda x: x.flatten(1)[:, ::16], images, families=["rotation", "hflip", "blur"],
                              n_images=40, mlp=False).to_json()
    charts = figures.suite_charts("equivariance", result["figures"])
    curves, bars = charts[0], charts[1]
    rotation = next(t for t in curves["data"] if t["name"] == "rotation")
    assert rotation["y"] == result["figures"]["invariance"]["rotation"]["relative"]
    assert curves["layout"]["title"]["text"].startswith("Invariance per transformation family")
    assert max(rotation["x"]) == 1.0
    assert bars["data"][0]["x"] == result["figures"]["r2"]["families"]
    assert bars["data"][0]["y"] == result["figures"]["r2"]["linear"]
    json.dumps(charts)
    mask = np.zeros((8, 8))
    mask[2:4, 2:4] = 1
    figs = {"triggers": [{"trigger": "grid", "collapse": 0.9, "control_collapse": 0.2}],
            "decree": {"mask": image_figure(mask), "pattern": image_figure(np.ones((8, 8, 3)) * 0.5)}}
    bd = figures.suite_charts("backdoor", figs)
    assert bd[0]["data"][0]["y"] == [0.9] and bd[0]["data"][1]["y"] == [0.2]
    assert bd[1]["data"][0]["type"] == "heatmap" and bd[1]["data"][0]["z"][2][2] == 255
    assert bd[2]["data"][0]["type"] == "image" and bd[2]["data"][0]["z"][0][0] == [128, 128, 128]


def test_pool_scan_charts_draw_roc_histograms_and_the_decree_trace():
    """The pool page's ROC curves are the result's own points; each histogram button shows one score's bars
    whose clean + poisoned heights are the result's counts; the DECREE trace is drawn on two axes."""
    from worker.suites.backdoor import scan_pool

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 16)).astype(np.float32)
    poison = np.zeros(300, dtype=int)
    poison[:6] = 1
    z[:6] = 3.0 + 0.01 * rng.normal(size=(6, 16))  # a tight planted group
    figs = scan_pool(z, poison=poison).to_json()["figures"]
    charts = figures.suite_charts("backdoor", figs)
    roc = next(c for c in charts if c["layout"]["title"]["text"].startswith("Pool scan: ROC"))
    names = [t["name"] for t in roc["data"]]
    assert names[:-1] == list(figs["roc"]) and names[-1] == "chance"
    first = roc["data"][0]
    assert first["x"] == figs["roc"][first["name"]]["fpr"] and first["y"] == figs["roc"][first["name"]]["tpr"]
    hist = next(c for c in charts if c["layout"]["title"]["text"].startswith("Pool scan: score histogram"))
    buttons = hist["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == list(figs["histograms"])
    for b in buttons:
        shown = [t for t, vis in zip(hist["data"], b["args"][0]["visible"], strict=True) if vis]
        h = figs["histograms"][b["label"]]
        assert [t["name"] for t in shown] == ["clean", "poisoned"]
        assert [c + p for c, p in zip(shown[0]["y"], shown[1]["y"], strict=True)] == h["counts"]
        assert shown[1]["y"] == h["poison_counts"] and sum(shown[1]["y"]) == 6
    assert [t["visible"] for t in hist["data"]].count(True) == 2
    trace = figures.decree_trace_chart({"trace": {"step": [0, 1, 2], "cos": [0.2, 0.5, 0.99], "pl1": [0.5, 0.3, 0.1]}})
    assert trace["data"][1]["yaxis"] == "y2" and trace["data"][0]["y"] == [0.2, 0.5, 0.99]
    assert figures.decree_trace_chart({}) is None and figures.pool_roc_chart({}) is None
    json.dumps(charts)
