"""The Jinja2 environment of the pages: built once by the app factory (`app.state.templates`), with the filters
and globals the templates use; page routers render through `render` and `macros`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from backend import figures, projector
from backend.services import leaderboards as leaderboard_service

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "frontend" / "templates"


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def metric_fmt(value: float | None, key: str) -> str:
    """Accuracies and rates as percentages, other metrics with 3 decimals (or 4 significant digits)."""
    if value is None:
        return "—"
    if figures.is_fraction(key):
        return f"{value:.1%}"
    return f"{value:.3f}" if 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"


def query(request: Request, **changes: Any) -> str:
    """The current query string with `changes` applied (None removes a key; lists repeat it)."""
    params: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        params[key] = values if len(values) > 1 else values[0]
    for key, value in changes.items():
        if value is None or value == "" or value == []:
            params.pop(key, None)
        else:
            params[key] = value
    return "?" + urlencode(params, doseq=True) if params else "?"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATE_DIR)
    templates.env.filters.update(pretty_json=pretty_json, metric_label=figures.metric_label,
                                 source_label=figures.source_label, fmt=fmt, metric_fmt=metric_fmt)
    templates.env.globals.update(direction=leaderboard_service.direction, query=query,
                                 projector_views=projector.projector_views, has_projection=projector.has_projection)
    return templates


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """`name` rendered with `context` by the app's template environment."""
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def macros(request: Request) -> Any:  # noqa: ANN401 - the template module: one attribute per macro
    """The macros of _macros.html, for the live endpoints that re-render parts of a page."""
    return request.app.state.templates.env.get_template("_macros.html").module
