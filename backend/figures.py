"""Plotly figure JSON built in Python (so it is testable in pytest); pages embed it, static JS draws it."""

from __future__ import annotations

from typing import Any

from repscope.schemas import MetricSeries

METRIC_LABELS = {
    "rankme": "RankMe (effective rank)",
    "rankme_centered": "RankMe, centred",
}


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x_title}, "zeroline": False},
        "yaxis": {"title": {"text": y_title}, "zeroline": False, **extra.pop("yaxis", {})},
        "hovermode": "x unified",
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
