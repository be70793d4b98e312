"""Plotly figure JSON built in Python (so it is testable in pytest); pages embed it, static JS draws it."""

from __future__ import annotations

import math
from typing import Any

from repscope import catalogue
from repscope.schemas import MetricSeries

LOGGED_PREFIX = "logged:"  # backend.services.metrics: a scalar the training job logged, not a computed metric


def metric_label(key: str) -> str:
    """A readable name; a logged scalar keeps the job's own name behind 'logged: ' (it is not our metric)."""
    if key.startswith(LOGGED_PREFIX):
        return source_label(key)
    return catalogue.label(key)


def source_label(key: str) -> str:
    """'logged:rankme' -> 'logged: rankme' (computed keys unchanged): the column and legend name of a logged scalar."""
    return "logged: " + key[len(LOGGED_PREFIX):] if key.startswith(LOGGED_PREFIX) else key


def is_fraction(key: str) -> bool:
    """Accuracies and rates in [0, 1] (the catalogue's `fraction`): drawn and hovered as percentages."""
    return catalogue.is_fraction(key)


LEGEND_BELOW = {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.22, "yanchor": "top"}  # never beside the plot
FRACTION_RANGE = [0, 1]  # catalogue `fraction` metrics: axis fixed at 0-100 %, whatever the data


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": x_title}, "zeroline": False, **extra.pop("xaxis", {})},
        "yaxis": {"title": {"text": y_title}, "zeroline": False, **extra.pop("yaxis", {})},
        "hovermode": extra.pop("hovermode", "x unified"),
        "legend": extra.pop("legend", LEGEND_BELOW),
        "margin": {"l": 70, "r": 20, "t": 50, "b": 55},
        **extra,
    }


def _yaxis_for(keys: list[str], yaxis: dict[str, Any] | None, values: list[float]) -> dict[str, Any]:
    """Axis options from the catalogue: all-fraction charts fixed at 0-100 % (FRACTION_RANGE); a log axis labels
    whole decades only (dtick 1) once the data spans two, so minor-tick labels do not pile up."""
    out = dict(yaxis or {})
    if keys and all(is_fraction(k) for k in keys):
        out.update(tickformat=".0%", range=list(FRACTION_RANGE))
    if out.get("type") == "log":
        pos = [v for v in values if v > 0]
        if pos and math.log10(max(pos)) - math.log10(min(pos)) >= 2:
            out.setdefault("dtick", 1)
    return out


def _hover_value(key: str) -> str:
    return "%{y:.2%}" if is_fraction(key) else "%{y:.4g}"


def metric_over_step(series: list[tuple[str, MetricSeries]], key: str) -> dict[str, Any]:
    """One line per run: the metric `key` against training step."""
    data = [{
        "type": "scatter", "mode": "lines+markers", "name": name,
        "x": [p.step for p in s.points], "y": [p.value for p in s.points],
        "hovertemplate": f"{name}<br>step %{{x}}<br>{key} {_hover_value(key)}<extra></extra>",
    } for name, s in series]
    yaxis = _yaxis_for([key], None, [p.value for _, s in series for p in s.points])
    y_title = f"{metric_label(key)} (%)" if is_fraction(key) else metric_label(key)
    return {"data": data, "layout": _layout(f"{metric_label(key)} over training", "training step", y_title,
                                            yaxis=yaxis)}


# --- a run's metrics over training, grouped -------------------------------------------------------------

def _times(s: MetricSeries, times: dict[int, float] | None) -> list[float | None] | None:
    return None if times is None else [times.get(p.step) for p in s.points]


def group_over_step(title: str, y_title: str, lines: list[tuple[str, str, MetricSeries]],
                    yaxis: dict[str, Any] | None = None, times: dict[int, float] | None = None) -> dict[str, Any]:
    """Several metrics (or runs) over step on one chart: lines are (legend name, metric key, series). `times`
    ({step: unix seconds}) goes to each trace's `customdata`, for static/charts.js's wall / relative time x-axis."""
    data = []
    for name, key, s in lines:
        trace = {"type": "scatter", "mode": "lines+markers", "name": name,
                 "x": [p.step for p in s.points], "y": [p.value for p in s.points],
                 "hovertemplate": f"{name}<br>step %{{x}}<br>{_hover_value(key)}<extra></extra>"}
        if (t := _times(s, times)) is not None:
            trace["customdata"] = t
        if data:  # the first (headline) line solid and wide, the rest dotted: an equal line never hides it
            trace["line"] = {"dash": "dot", "width": 1.5}
        elif len(lines) > 1:
            trace["line"] = {"width": 3}
        data.append(trace)
    axis = _yaxis_for([key for _, key, _ in lines], yaxis, [p.value for _, _, s in lines for p in s.points])
    return {"data": data, "layout": _layout(title, "training step", y_title, yaxis=axis, hovermode="closest")}


EMPTY_RUN_TEXT = ("No metrics yet. Upload embeddings or a checkpoint to this run (repscope.Client(...).run(...)"
                  ".log_embeddings, or the Upload page), or log your own scalars with POST /api/v1/runs/{run}/metrics;"
                  " charts appear here as soon as the first evaluation finishes.")


def empty_run_chart(run_id: int) -> dict[str, Any]:
    """What an empty run page draws instead of a blank axis: no axes, a note saying what to do."""
    text = EMPTY_RUN_TEXT.replace("{run}", str(run_id))
    wrapped = "<br>".join(_wrap(text, 90))
    return {"data": [], "layout": {
        "title": {"text": "No metrics yet"}, "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "annotations": [{"text": wrapped, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                         "align": "center", "font": {"size": 14}}],
        "margin": {"l": 20, "r": 20, "t": 50, "b": 20}, "meta": {"empty": True}}}


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def step_times(anchors: dict[int, float]) -> Any:
    """{step: unix seconds} -> a function step -> seconds: exact at an anchor (when that step's artifact was
    uploaded), linear in step between the two nearest anchors, None outside them (no extrapolation)."""
    xs = sorted(anchors)

    def at(step: int) -> float | None:
        if step in anchors:
            return anchors[step]
        if not xs or step < xs[0] or step > xs[-1]:
            return None
        i = next(i for i, x in enumerate(xs) if x > step)
        a, b = xs[i - 1], xs[i]
        return anchors[a] + (anchors[b] - anchors[a]) * (step - a) / (b - a)
    return at


def run_charts(series: dict[str, MetricSeries], anchors: dict[int, float] | None = None,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's metrics over training step, grouped: (main charts, nested-prefix charts).

    Every key the run has is drawn: scalars the training job logged first (`logged:<key>`, one chart each,
    titled as logged, so one named like a metric never reads as the computed one), then catalogue keys in
    their group's chart (repscope.catalogue.GROUPS, in that order), other keys one chart each, nested-prefix
    keys `{key}@d{k}` one chart per base key (a line per prefix dimension).

    `anchors` ({step: unix seconds the step's artifact was uploaded}) gives every point a wall time (step_times;
    logged scalars between uploads interpolated), and every chart `layout.meta.t0`, the run's first point time:
    static/charts.js draws x by step, wall time or seconds since t0 from these."""
    at = step_times(anchors or {})
    steps = {p.step for s in series.values() for p in s.points}
    times = {st: t for st in steps if (t := at(st)) is not None} if anchors else None
    groups: dict[int, list[str]] = {}
    others, nested, logged = [], {}, []
    for key in series:
        if key.startswith(LOGGED_PREFIX):
            logged.append(key)
            continue
        if m := catalogue.NESTED.match(key):
            nested.setdefault(m.group(1), []).append((int(m.group(2)), key))
            continue
        g = catalogue.group(key)
        if g is None:
            others.append(key)
        else:
            groups.setdefault(catalogue.GROUP_INDEX[g.name], []).append(key)
    charts = [group_over_step(f"{source_label(key)} over training (logged by the training job)", source_label(key),
                              [(source_label(key), key, series[key])], times=times) for key in sorted(logged)]
    for g in sorted(groups):
        group = catalogue.GROUPS[g]
        keys = sorted(groups[g], key=catalogue.legend_order)
        charts.append(group_over_step(group.title, group.y_title, [(metric_label(k), k, series[k]) for k in keys],
                                      group.yaxis, times))
    for key in sorted(others):
        charts.append(group_over_step(f"{key} over training", key, [(key, key, series[key])], times=times))
    nested_charts = []
    for base in sorted(nested, key=lambda b: (b != "rankme", b)):
        lines = [(f"d = {d}", key, series[key]) for d, key in sorted(nested[base], reverse=True)]
        if base in series:
            lines.insert(0, ("full D", base, series[base]))
        nested_charts.append(group_over_step(f"{metric_label(base)} of nested prefixes z[:, :d] over training",
                                             metric_label(base), lines, times=times))
    if times:
        t0 = min(times.values())
        for fig in (*charts, *nested_charts):
            fig["layout"]["meta"] = {"t0": t0}
    return charts, nested_charts


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


def invariance_curves(fig: dict[str, Any]) -> dict[str, Any] | None:
    """The ranked invariance per family against the strength (strengths scaled to each family's largest): the
    relative invariance 1 − E‖f(gx) − f(x)‖² / E_{i≠j}‖f(gx_j) − f(x_i)‖² (Bouchacourt et al. 2021); results
    stored before it existed show their mean cosine instead, and say so in the title."""
    if not fig:
        return None
    relative = all(curve.get("relative") for curve in fig.values())
    key, label = ("relative", "relative invariance") if relative else ("mean_cosine", "cos")
    data = []
    for family, curve in fig.items():
        strengths = [float(v) for v in curve.get("strength", [])]
        top = max((abs(v) for v in strengths), default=0.0) or 1.0
        unit = curve.get("unit", "")
        data.append({"type": "scatter", "mode": "lines+markers", "name": family,
                     "x": [v / top for v in strengths], "y": curve.get(key, []),
                     "customdata": strengths,
                     "hovertemplate": f"{family}<br>strength %{{customdata:g}} {unit}<br>{label} %{{y:.3f}}<extra></extra>"})
    title = ("Invariance per transformation family: 1 − ‖f(gx) − f(x)‖² / ‖f(gx′) − f(x)‖² (1 = invariant, "
             "0 = as far as another image)" if relative else "Invariance: mean cos(f(x), f(Tx)) per transformation family")
    return {"data": data, "layout": _layout(title, "strength (fraction of the family's largest)",
                                            "relative invariance" if relative else "mean cosine",
                                            hovermode="closest")}


def r2_bars(fig: dict[str, Any]) -> dict[str, Any] | None:
    """Held-out R² of the transformation's parameters from (f(x), f(Tx)), per family, linear and MLP heads."""
    if not fig or not fig.get("families"):
        return None
    data = [{"type": "bar", "name": head, "x": fig["families"], "y": fig.get(key) or [],
             "hovertemplate": f"%{{x}}<br>{head} R² %{{y:.3f}}<extra></extra>"}
            for key, head in (("linear", "linear head"), ("mlp", "MLP head")) if any(v is not None for v in fig.get(key) or [])]
    layout = _layout("Information retained: parameter-prediction R² (mean over outputs)", "family", "held-out R²",
                     hovermode="closest", barmode="group")
    layout["xaxis"]["type"] = "category"
    return {"data": data, "layout": layout}


def equivariance_radar(fig: dict[str, Any], name: str = "this encoder") -> dict[str, Any] | None:
    axes = (fig or {}).get("axes") or []
    axes = [a for a in axes if a.get("value") is not None]
    if len(axes) < 3:
        return None
    labels = [a["label"] for a in axes]
    data = [{"type": "scatterpolar", "fill": "toself", "name": name, "r": [a["value"] for a in axes] + [axes[0]["value"]],
             "theta": labels + labels[:1], "hovertemplate": "%{theta}<br>%{r:.3f}<extra></extra>"}]
    return {"data": data, "layout": {"title": {"text": "Equivariance summary"},
                                     "polar": {"radialaxis": {"range": [0, 1]}}, "margin": {"l": 80, "r": 80, "t": 60, "b": 40}}}


def equivariance_charts(figs: dict[str, Any]) -> list[dict[str, Any]]:
    built = (invariance_curves(figs.get("invariance") or {}), r2_bars(figs.get("r2") or {}),
             equivariance_radar(figs.get("radar") or {}))
    return [c for c in built if c is not None]


def image(pixels: list, title: str) -> dict[str, Any]:
    """A small uint8 image (H×W grey or H×W×3) as a Plotly heatmap / image trace."""
    grey = bool(pixels) and not isinstance(pixels[0][0], list)
    trace = ({"type": "heatmap", "z": pixels, "colorscale": "Greys", "reversescale": True, "showscale": False}
             if grey else {"type": "image", "z": pixels})
    layout = {"title": {"text": title}, "xaxis": {"visible": False}, "yaxis": {"visible": False, "autorange": "reversed",
                                                                                "scaleanchor": "x"},
              "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 280}
    return {"data": [trace], "layout": layout}


def pool_roc_chart(roc: dict[str, Any]) -> dict[str, Any] | None:
    """The pool scan's ROC curve of every score against the ground-truth poison flags, with chance."""
    if not roc:
        return None
    data = [{"type": "scatter", "mode": "lines", "name": name, "x": curve.get("fpr", []), "y": curve.get("tpr", []),
             "hovertemplate": f"{name}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"}
            for name, curve in roc.items()]
    data.append({"type": "scatter", "mode": "lines", "name": "chance", "x": [0, 1], "y": [0, 1],
                 "line": {"dash": "dot", "color": "#999"}, "hoverinfo": "skip"})
    return {"data": data, "layout": _layout("Pool scan: ROC of each score against the poison flags",
                                            "false-positive rate (clean samples flagged)",
                                            "true-positive rate (poisons found)", hovermode="closest",
                                            xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]})}


def pool_histogram_chart(hists: dict[str, Any]) -> dict[str, Any] | None:
    """Score histograms of the pool scan, one score at a time (buttons switch), poisons stacked on clean rows
    when flags were given."""
    if not hists:
        return None
    data, owner = [], []
    for i, (name, h) in enumerate(hists.items()):
        edges = [float(v) for v in h.get("edges", [])]
        mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=False)]
        width = (edges[1] - edges[0]) if len(edges) > 1 else None
        counts = list(h.get("counts", []))
        poison = h.get("poison_counts")
        clean = [c - p for c, p in zip(counts, poison, strict=True)] if poison is not None else counts
        parts = [("clean" if poison is not None else "samples", clean)]
        if poison is not None:
            parts.append(("poisoned", list(poison)))
        for label, ys in parts:
            data.append({"type": "bar", "name": f"{label}", "x": mids, "y": ys, "width": width, "visible": i == 0,
                         "legendgroup": label, "meta": name,
                         "hovertemplate": f"{name} ≈ %{{x:.3g}}<br>{label}: %{{y}}<extra></extra>"})
            owner.append(name)
    names = list(hists)
    buttons = [{"label": name, "method": "update",
                "args": [{"visible": [o == name for o in owner]}, {"xaxis.title.text": f"{name} score"}]}
               for name in names]
    layout = _layout("Pool scan: score histogram (higher = more suspicious)", f"{names[0]} score", "samples",
                     barmode="stack", hovermode="closest")
    layout["updatemenus"] = [{"type": "buttons", "direction": "right", "x": 0, "y": 1.18, "xanchor": "left",
                              "buttons": buttons, "showactive": True}]
    layout["margin"]["t"] = 90
    return {"data": data, "layout": layout}


def decree_trace_chart(decree: dict[str, Any]) -> dict[str, Any] | None:
    """DECREE's optimisation: the batch cosine and the mask's PL1 against the step."""
    trace = decree.get("trace") or {}
    if not trace.get("step"):
        return None
    data = [{"type": "scatter", "mode": "lines", "name": "batch cosine", "x": trace["step"], "y": trace.get("cos", [])},
            {"type": "scatter", "mode": "lines", "name": "PL1 of the mask", "x": trace["step"],
             "y": trace.get("pl1", []), "yaxis": "y2"}]
    return {"data": data, "layout": _layout("DECREE search: stamped-batch cosine and mask size", "step",
                                            "mean pairwise cosine", hovermode="x unified",
                                            yaxis2={"title": {"text": "PL1"}, "overlaying": "y", "side": "right",
                                                    "rangemode": "tozero"})}


def backdoor_charts(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-trigger collapse against its control; DECREE's recovered mask, pattern, stamp and search trace; the
    pool scan's ROC curves and score histograms (its top suspicious samples are a table on the page)."""
    charts = []
    rows = figs.get("triggers") or []
    if rows:
        names = [r["trigger"] for r in rows]
        charts.append({"data": [
            {"type": "bar", "name": "trigger", "x": names, "y": [r["collapse"] for r in rows]},
            {"type": "bar", "name": "equal-energy control", "x": names, "y": [r["control_collapse"] for r in rows]}],
            "layout": _layout("Known-trigger collapse: mean pairwise cosine of centred f(trigger(x))",
                              "trigger", "mean pairwise cosine (higher = more suspicious)", barmode="group",
                              hovermode="closest")})
    montage = figs.get("montage") or {}
    if montage.get("pixels"):
        charts.append(image(montage["pixels"], f"The 16 most suspicious samples by {montage['score']} "
                                               "(row by row, most suspicious first)"))
    decree = figs.get("decree") or {}
    for key, title in (("mask", "DECREE mask m"), ("pattern", "DECREE pattern p"), ("stamp", "stamp m·p")):
        if decree.get(key):
            charts.append(image(decree[key], title))
    built = (decree_trace_chart(decree), pool_roc_chart(figs.get("roc") or {}),
             pool_histogram_chart(figs.get("histograms") or {}))
    charts.extend(c for c in built if c is not None)
    return charts


SUITE_CHARTS = {"spectrum": spectrum_charts, "probes": probe_charts, "equivariance": equivariance_charts,
                "backdoor": backdoor_charts}


def suite_charts(suite: str, figs: dict[str, Any]) -> list[dict[str, Any]]:
    builder = SUITE_CHARTS.get(suite)
    return builder(figs) if builder and figs else []


# --- comparisons ---------------------------------------------------------------------------------------------

def overlaid_spectra(spectra: list[tuple[str, int, list[float]]]) -> dict[str, Any]:
    """σ_k / σ_1 against k, one line per run (its latest spectrum evaluation), log y: decay shapes compare
    across runs whatever their scale; the hover also shows the raw σ_k."""
    data = []
    for name, step, sv in spectra:
        pos = [v for v in sv if v > 0]
        if not pos:
            continue
        top = pos[0] if pos[0] > 0 else 1.0
        data.append({"type": "scatter", "mode": "lines", "name": f"{name} (step {step})",
                     "x": list(range(1, len(pos) + 1)), "y": [v / top for v in pos], "customdata": pos,
                     "hovertemplate": f"{name}, step {step}<br>k %{{x}}<br>σ_k/σ_1 %{{y:.4g}}"
                                      "<br>σ_k %{customdata:.4g}<extra></extra>"})
    return {"data": data, "layout": _layout("Singular-value spectra (latest spectrum evaluation of each run)",
                                            "index k (descending)", "σ_k / σ_1 (log scale)",
                                            yaxis={"type": "log", "exponentformat": "power"},
                                            xaxis={"type": "log"}, hovermode="closest")}


def radar(runs: list[tuple[str, dict[str, float | None]]], keys: list[str],
          score_fn: Any) -> dict[str, Any] | None:
    """Summary metrics on a radar: each axis scaled over the compared runs so the best run is 1 and the worst
    0 (direction-aware through `score_fn(key, value)`, larger = better); equal values all get 1; a missing
    value is drawn at 0 and hovers as "missing". The hover shows the raw value."""
    axes = [k for k in keys if any(v.get(k) is not None for _, v in runs)]
    if len(axes) < 3:
        return None
    bounds = {}
    for k in axes:
        scores = [score_fn(k, v[k]) for _, v in runs if v.get(k) is not None]
        scores = [x for x in scores if x is not None]
        bounds[k] = (min(scores), max(scores)) if scores else (0.0, 0.0)
    data = []
    for name, values in runs:
        r, text = [], []
        for k in axes:
            v = values.get(k)
            sc = score_fn(k, v) if v is not None else None
            lo, hi = bounds[k]
            r.append(0.0 if sc is None else (1.0 if hi == lo else (sc - lo) / (hi - lo)))
            text.append("missing" if v is None else f"{v:.4g}")
        labels = [metric_label(k) for k in axes]
        data.append({"type": "scatterpolar", "name": name, "r": [*r, r[0]], "theta": [*labels, labels[0]],
                     "text": [*text, text[0]], "fill": "toself", "opacity": 0.6,
                     "hovertemplate": f"{name}<br>%{{theta}}: %{{text}}<br>relative %{{r:.2f}}<extra></extra>"})
    return {"data": data, "layout": {
        "title": {"text": "Summary metrics (each axis: 1 = best of the compared runs, 0 = worst)"},
        "polar": {"radialaxis": {"range": [0, 1.05], "tickvals": [0, 0.5, 1],
                                 "title": {"text": "relative score"}},
                  "angularaxis": {"direction": "clockwise"}},
        "showlegend": True, "legend": {"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.12},
        "margin": {"l": 90, "r": 90, "t": 70, "b": 40}, "hovermode": "closest"}}


def selection_scatter(key: str, probe: str, points: list[tuple[str, int, float, float]],
                      rho: float | None, tau: float | None) -> dict[str, Any]:
    """A label-free metric (x) against probe accuracy (y) over checkpoints: one trace per run (≤ 12 runs,
    joined in step order) or one trace coloured by step (more runs). Title: Spearman ρ and Kendall τ-b."""
    runs: dict[str, list[tuple[int, float, float]]] = {}
    for run, step, x, y in points:
        runs.setdefault(run, []).append((step, x, y))
    fmt = "%{y:.2%}" if is_fraction(probe) else "%{y:.4g}"
    hover = f"step %{{customdata}}<br>{key} %{{x:.4g}}<br>{probe} {fmt}"
    if len(runs) <= 12:
        data = [{"type": "scatter", "mode": "lines+markers", "name": run, "line": {"width": 1, "dash": "dot"},
                 "x": [p[1] for p in sorted(pts)], "y": [p[2] for p in sorted(pts)],
                 "customdata": [p[0] for p in sorted(pts)], "hovertemplate": f"{run}<br>{hover}<extra></extra>"}
                for run, pts in runs.items()]
    else:
        data = [{"type": "scatter", "mode": "markers", "name": "checkpoints", "x": [p[2] for p in points],
                 "y": [p[3] for p in points], "customdata": [p[1] for p in points], "text": [p[0] for p in points],
                 "marker": {"color": [p[1] for p in points], "colorscale": "Viridis", "showscale": True,
                            "colorbar": {"title": {"text": "step"}}},
                 "hovertemplate": f"%{{text}}<br>{hover}<extra></extra>"}]
    stats = ", ".join([f"Spearman ρ = {_num(rho)}", f"Kendall τ-b = {_num(tau)}", f"n = {len(points)}"])
    yaxis = {"tickformat": ".0%"} if is_fraction(probe) else {}
    y_title = f"{metric_label(probe)} (%)" if is_fraction(probe) else metric_label(probe)
    return {"data": data, "layout": _layout(f"{metric_label(key)} vs {metric_label(probe)}<br><sup>{stats}</sup>",
                                            f"{metric_label(key)} (label-free)", y_title, yaxis=yaxis,
                                            hovermode="closest")}


def _num(x: float | None) -> str:
    return "undefined" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
