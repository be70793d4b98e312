"""Plotly figure JSON built in Python (so it is testable in pytest); pages embed it, static JS draws it."""

from __future__ import annotations

from typing import Any

from repscope.schemas import MetricSeries

METRIC_LABELS = {
    "rankme": "RankMe (effective rank)",
    "rankme_centered": "RankMe, centred",
    "stable_rank": "stable rank",
    "nesum": "NESum",
    "alpha_req": "α-ReQ",
    "linear_top1": "linear probe top-1",
    "knn20_top1": "20-NN top-1",
}


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x_title}, "zeroline": False, **extra.pop("xaxis", {})},
        "yaxis": {"title": {"text": y_title}, "zeroline": False, **extra.pop("yaxis", {})},
        "hovermode": extra.pop("hovermode", "x unified"),
        "margin": {"l": 70, "r": 20, "t": 50, "b": 55},
        **extra,
    }


def metric_over_step(series: list[tuple[str, MetricSeries]], key: str) -> dict[str, Any]:
    """One line per run: the metric `key` against training step."""
    data = [{
        "type": "scatter", "mode": "lines+markers", "name": name,
        "x": [p.step for p in s.points], "y": [p.value for p in s.points],
        "hovertemplate": f"{name}<br>step %{{x}}<br>{key} %{{y:.4f}}<extra></extra>",
    } for name, s in series]
    return {"data": data, "layout": _layout(f"{metric_label(key)} over training", "training step", metric_label(key))}


def singular_value_spectrum(singular_values: list[float], title: str = "Singular-value spectrum") -> dict[str, Any]:
    """σ_k against k on a log y axis (zeros dropped: log scale cannot show them)."""
    ks = [i + 1 for i, s in enumerate(singular_values) if s > 0]
    ys = [s for s in singular_values if s > 0]
    data = [{"type": "scatter", "mode": "lines", "name": "σ_k", "x": ks, "y": ys,
             "hovertemplate": "k %{x}<br>σ %{y:.4g}<extra></extra>"}]
    return {"data": data, "layout": _layout(title, "index k (descending)", "singular value σ_k (log scale)",
                                            yaxis={"type": "log", "exponentformat": "power"})}


def explained_variance(cumulative: list[float]) -> dict[str, Any]:
    """Cumulative share of variance explained by the first k principal components (centred spectrum)."""
    ks = list(range(1, len(cumulative) + 1))
    data = [{"type": "scatter", "mode": "lines", "name": "cumulative", "x": ks, "y": cumulative,
             "hovertemplate": "%{x} components<br>%{y:.1%} of variance<extra></extra>"}]
    return {"data": data, "layout": _layout("Cumulative explained variance", "number of principal components k",
                                            "share of variance explained",
                                            yaxis={"range": [0, 1.02], "tickformat": ".0%"})}


def alpha_req_fit(fig: dict[str, Any]) -> dict[str, Any] | None:
    """log λ_i against log i with the α-ReQ least-squares line over its fit range."""
    if not fig or not fig.get("log_i"):
        return None
    data = [{"type": "scatter", "mode": "markers", "name": "log λ_i", "x": fig["log_i"], "y": fig["log_lambda"],
             "marker": {"size": 4}, "hovertemplate": "log i %{x:.2f}<br>log λ %{y:.3f}<extra></extra>"}]
    title = "α-ReQ power-law fit of the covariance spectrum"
    if fig.get("fit_line") and fig.get("range"):
        first, last = fig["range"]
        xs, ys = fig["log_i"][first - 1:last], fig["fit_line"][first - 1:last]
        data.append({"type": "scatter", "mode": "lines", "name": f"fit, ranks {first}–{last}", "x": xs, "y": ys,
                     "line": {"width": 3}, "hoverinfo": "skip"})
        title += f": α = {fig['alpha']:.3f}, R² = {fig['r2']:.3f}"
    return {"data": data, "layout": _layout(title, "log rank i", "log eigenvalue λ_i", hovermode="closest")}


MATRYOSHKA_CHART_KEYS = ("rankme", "rankme_centered", "stable_rank", "nesum")


def matryoshka(fig: dict[str, Any]) -> dict[str, Any] | None:
    """Rank-type metrics of the nested prefixes z[:, :d] against d (Matryoshka / nested features)."""
    dims = fig.get("dims") if fig else None
    if not dims or len(dims) < 2:
        return None
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    xs = [dims[i] for i in order]
    data = [{"type": "scatter", "mode": "lines+markers", "name": metric_label(key), "x": xs,
             "y": [fig[key][i] for i in order], "hovertemplate": f"d = %{{x}}<br>{key} %{{y:.3f}}<extra></extra>"}
            for key in MATRYOSHKA_CHART_KEYS if key in fig]
    return {"data": data, "layout": _layout("Metrics of nested prefixes z[:, :d]", "prefix dimension d (log₂ scale)",
                                            "value", xaxis={"type": "log", "title": {"text": "prefix dimension d"},
                                                            "tickvals": xs, "ticktext": [str(x) for x in xs]})}


def spectrum_charts(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chart the spectrum suite's figure data supports, in page order."""
    charts = []
    if figs.get("singular_values"):
        charts.append(singular_value_spectrum(figs["singular_values"]))
    if figs.get("explained_variance_cumulative"):
        charts.append(explained_variance(figs["explained_variance_cumulative"]))
    for built in (alpha_req_fit(figs.get("alpha_fit") or {}), matryoshka(figs.get("matryoshka") or {})):
        if built is not None:
            charts.append(built)
    return charts


def knn_accuracy(fig: dict[str, Any]) -> dict[str, Any] | None:
    """Weighted k-NN top-1 / top-5 accuracy against k."""
    if not fig or not fig.get("k"):
        return None
    data = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": fig["k"], "y": fig[key],
             "hovertemplate": f"k = %{{x}}<br>{name} %{{y:.2%}}<extra></extra>"}
            for key, name in (("top1", "top-1"), ("top5", "top-5")) if fig.get(key)]
    return {"data": data, "layout": _layout("Weighted k-NN accuracy (T = 0.07)", "neighbours k", "test accuracy",
                                            xaxis={"type": "log", "tickvals": fig["k"]},
                                            yaxis={"tickformat": ".0%"})}


def c_sweep(fig: dict[str, Any]) -> dict[str, Any] | None:
    """Holdout accuracy of the linear probe over the L2 grid, with the chosen C marked."""
    if not fig or not fig.get("c"):
        return None
    data = [{"type": "scatter", "mode": "lines+markers", "name": "holdout top-1", "x": fig["c"],
             "y": fig["holdout_top1"], "hovertemplate": "C = %{x:.3g}<br>holdout %{y:.2%}<extra></extra>"}]
    layout = _layout("Linear probe: inverse L2 strength C on the train holdout", "C (log scale)",
                     "holdout top-1 accuracy", xaxis={"type": "log", "exponentformat": "power"},
                     yaxis={"tickformat": ".0%"})
    if fig.get("best_c") is not None:
        layout["shapes"] = [{"type": "line", "x0": fig["best_c"], "x1": fig["best_c"], "yref": "paper", "y0": 0,
                             "y1": 1, "line": {"dash": "dot"}}]
        layout["title"]["text"] += f" (chosen C = {fig['best_c']:.3g})"
    return {"data": data, "layout": layout}


def confusion_matrix(fig: dict[str, Any]) -> dict[str, Any] | None:
    """Heatmap of test counts: true class (rows) against predicted class (columns)."""
    if not fig or not fig.get("matrix"):
        return None
    labels = [str(x) for x in fig["labels"]]
    data = [{"type": "heatmap", "z": fig["matrix"], "x": labels, "y": labels, "colorscale": "Blues",
             "hovertemplate": "true %{y}<br>predicted %{x}<br>%{z} samples<extra></extra>"}]
    layout = _layout("Linear probe confusion matrix (test split)", "predicted class", "true class",
                     yaxis={"autorange": "reversed", "type": "category"}, hovermode="closest")
    layout["xaxis"]["type"] = "category"
    return {"data": data, "layout": layout}


def per_class_accuracy(fig: dict[str, Any]) -> dict[str, Any] | None:
    if not fig or not fig.get("values"):
        return None
    data = [{"type": "bar", "x": [str(x) for x in fig["labels"]], "y": fig["values"], "name": "recall",
             "hovertemplate": "class %{x}<br>accuracy %{y:.2%}<extra></extra>"}]
    layout = _layout("Linear probe accuracy per class (test split)", "class", "accuracy (recall)",
                     yaxis={"tickformat": ".0%", "range": [0, 1.02]}, hovermode="closest")
    layout["xaxis"]["type"] = "category"
    return {"data": data, "layout": layout}


def probe_charts(figs: dict[str, Any]) -> list[dict[str, Any]]:
    built = (knn_accuracy(figs.get("knn") or {}), c_sweep(figs.get("c_sweep") or {}),
             confusion_matrix(figs.get("confusion_matrix") or {}),
             per_class_accuracy(figs.get("per_class_accuracy") or {}))
    return [c for c in built if c is not None]


SUITE_CHARTS = {"spectrum": spectrum_charts, "probes": probe_charts}


def suite_charts(suite: str, figs: dict[str, Any]) -> list[dict[str, Any]]:
    builder = SUITE_CHARTS.get(suite)
    return builder(figs) if builder and figs else []
