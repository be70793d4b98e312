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
