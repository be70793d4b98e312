"""The embedding projector's page data, built from projector results (worker/suites/projector): per panel the
2-D coordinates of each projection, the rows and labels for the hover, and every colouring with its colours.

Colours are decided here, once, so that two panels (two steps of a run) colour alike and a test can check them:
  label   -- label v is CATEGORY_PALETTE[v mod 10] (d3's category10, plotly.colors.qualitative.D3): the same label
             has the same colour in every panel and every run
  split   -- train (0) and test (1) as palette entries 0 and 1
  poison  -- clean grey, poisoned red (the palette's grey and red)
  density -- the k-NN density on Viridis, one colour range (cmin, cmax) over every panel
A colouring with at most LEGEND_MAX categories is drawn as one trace per category (a legend entry each);
more categories are drawn as one trace coloured point by point, with no legend.
static/projector.js draws the panels with Plotly `scattergl` (WebGL) and switches colouring and projection.
"""

from __future__ import annotations

from typing import Any

from plotly.colors import qualitative, sequential

CATEGORY_PALETTE: tuple[str, ...] = tuple(qualitative.D3)  # d3.schemeCategory10
POISON_COLORS = {0: CATEGORY_PALETTE[7], 1: CATEGORY_PALETTE[3]}  # grey, red
SPLIT_NAMES = {0: "train", 1: "test"}
POISON_NAMES = {0: "clean", 1: "poisoned"}
DENSITY_SCALE = [[i / (len(sequential.Viridis) - 1), c] for i, c in enumerate(sequential.Viridis)]
LEGEND_MAX = 30  # above this many categories, one trace coloured point by point
PROJECTION_NAMES = {"pca": "PCA", "umap": "UMAP"}
COLOR_BY = ("label", "split", "poison", "density")  # selector order; the first one a panel has is the default


def label_color(value: int) -> str:
    """The colour of label `value` (any int; negative labels wrap the same way)."""
    return CATEGORY_PALETTE[int(value) % len(CATEGORY_PALETTE)]


def _category(values_per_panel: list[list[int] | None], name: str, title: str) -> list[dict[str, Any]] | None:
    """One colouring spec per panel: category index per point, and the categories (shared by every panel)."""
    if any(v is None for v in values_per_panel):
        return None
    distinct = sorted({int(v) for values in values_per_panel for v in values})
    if name == "label":
        cats = [{"value": v, "name": f"label {v}", "color": label_color(v)} for v in distinct]
    elif name == "split":
        cats = [{"value": v, "name": SPLIT_NAMES.get(v, f"split {v}"), "color": label_color(v)} for v in distinct]
    else:
        cats = [{"value": v, "name": POISON_NAMES.get(v, f"poison {v}"), "color": POISON_COLORS.get(v, "#000000")}
                for v in distinct]
    index = {c["value"]: i for i, c in enumerate(cats)}
    return [{"kind": "category", "title": title, "categories": cats, "legend": len(cats) <= LEGEND_MAX,
             "codes": [index[int(v)] for v in values]} for values in values_per_panel]


def _density(figs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    values = [f.get("density") for f in figs]
    if any(v is None for v in values):
        return None
    every = [x for v in values for x in v]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    k = figs[0].get("density_k", "k")
    return [{"kind": "scale", "title": f"k-NN density (mean cosine to the {k} nearest rows)", "values": v,
             "cmin": lo, "cmax": hi if hi > lo else lo + 1e-9, "colorscale": DENSITY_SCALE} for v in values]


def _axes(name: str, projection: dict[str, Any]) -> dict[str, str]:
    if name == "pca":
        r = projection.get("explained_variance_ratio") or [0.0, 0.0]
        return {"x_title": f"PC1 ({r[0]:.1%} of the variance)", "y_title": f"PC2 ({r[1]:.1%} of the variance)"}
    return {"x_title": f"{PROJECTION_NAMES.get(name, name)} 1", "y_title": f"{PROJECTION_NAMES.get(name, name)} 2"}


def marker_size(points: int) -> int:
    """Smaller dots for more points: 6 px up to 2 000 points, 4 up to 10 000, else 3."""
    return 6 if points <= 2_000 else 4 if points <= 10_000 else 3


def projector_views(panels: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The page data for one or more projector results, given as (panel title, result figures) pairs:
    {"panels": [...], "color_by": [names every panel has, in COLOR_BY order], "projections": [...]}.

    Each panel: title, n_rows, rows, labels (or None), points, marker size, projections {name: {x, y, x_title,
    y_title}}, colorings {name: spec}. A colouring or projection is offered only when every panel has it."""
    figs = [f for _, f in panels]
    colorings: dict[str, list[dict[str, Any]] | None] = {
        "label": _category([f.get("labels") for f in figs], "label", "label"),
        "split": _category([f.get("split") for f in figs], "split", "split"),
        "poison": _category([f.get("poison") for f in figs], "poison", "poison flag"),
        "density": _density(figs),
    }
    offered = [c for c in COLOR_BY if colorings[c] is not None]
    names = [p for p in PROJECTION_NAMES if all(p in (f.get("projections") or {}) for f in figs)]
    out = []
    for i, (title, f) in enumerate(panels):
        projections = {p: {"x": f["projections"][p]["x"], "y": f["projections"][p]["y"],
                           **_axes(p, f["projections"][p])} for p in names}
        out.append({"title": title, "n_rows": f.get("n_rows"), "rows": f.get("rows", []),
                    "labels": f.get("labels"), "points": len(f.get("rows", [])),
                    "marker_size": marker_size(len(f.get("rows", []))), "projections": projections,
                    "colorings": {c: colorings[c][i] for c in offered}})
    return {"panels": out, "color_by": offered, "projections": names}


def has_projection(figs: dict[str, Any] | None) -> bool:
    """Whether a result holds projector figure data (a finished projector evaluation)."""
    return bool(figs and figs.get("projections", {}).get("pca"))
