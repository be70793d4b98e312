"""HTML pages: server-rendered Jinja2, figure JSON from backend.figures, drawn by static JS with Plotly."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from backend import figures
from backend.api.deps import SessionDep
from backend.services import evaluations as evaluation_service
from backend.services import metrics as metric_service
from backend.services import runs as run_service
from backend.services.artifacts import list_run_artifacts
from repscope.schemas import FINISHED, Status

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "frontend" / "templates")
TEMPLATES.env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
RUN_CHART_KEYS = ("rankme", "linear_top1", "knn20_top1")
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """Plotly.js from the installed plotly package: no CDN, works offline."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request, session: SessionDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "projects.html", {"projects": run_service.list_projects(session)})


@router.get("/projects/{name}", response_class=HTMLResponse)
def project_page(request: Request, name: str, session: SessionDep, q: str | None = None,
                 page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    project = run_service.get_project(session, name)
    runs, total = run_service.list_runs(session, project=name, q=q, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    latest = {r.id: _latest(session, r.id, "rankme") for r in runs}
    return TEMPLATES.TemplateResponse(request, "project.html", {
        "project": project, "runs": runs, "latest": latest, "q": q or "", "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)), "total": total})


def _latest(session, run_id: int, key: str) -> float | None:  # noqa: ANN001
    points = metric_service.series(session, run_id, key).points
    return points[-1].value if points else None


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep) -> HTMLResponse:
    run = run_service.get_run(session, run_id)
    series = {key: metric_service.series(session, run_id, key) for key in RUN_CHART_KEYS}
    charts = [figures.metric_over_step([(run.name, s)], key) for key, s in series.items()
              if s.points or key == "rankme"]
    artifacts = list_run_artifacts(session, run_id)
    pending = any(e.status not in FINISHED for a in artifacts for e in a.evaluations)
    return TEMPLATES.TemplateResponse(request, "run.html", {
        "run": run, "charts": charts, "artifacts": artifacts, "pending": pending,
        "metric_keys": metric_service.keys(session, run_id)})


def _nested_table(metrics: dict[str, float], full_dim: int | None) -> dict[str, object] | None:
    """Metrics keyed 'name@d64' as rows (metric) x columns (prefix dimension), the full D first."""
    dims = sorted({int(k.split("@d", 1)[1]) for k in metrics if "@d" in k}, reverse=True)
    if not dims:
        return None
    names = sorted({k.split("@d", 1)[0] for k in metrics if "@d" in k})
    columns = ([full_dim] if full_dim else []) + dims
    rows = {name: ([metrics.get(name)] if full_dim else []) + [metrics.get(f"{name}@d{d}") for d in dims]
            for name in names}
    return {"dims": columns, "rows": rows}


@router.get("/evaluations/{evaluation_id}", response_class=HTMLResponse)
def evaluation_page(request: Request, evaluation_id: int, session: SessionDep) -> HTMLResponse:
    evaluation = evaluation_service.get_evaluation(session, evaluation_id)
    view = evaluation_service.evaluation_read(evaluation)
    figs = (view.result or {}).get("figures", {})
    charts = figures.suite_charts(evaluation.suite, figs)
    main_metrics = {k: v for k, v in view.metrics.items() if "@d" not in k}
    nested = _nested_table(view.metrics, evaluation.artifact.meta.get("d"))
    return TEMPLATES.TemplateResponse(request, "evaluation.html", {
        "evaluation": view, "artifact": evaluation.artifact, "run": evaluation.artifact.run, "charts": charts,
        "main_metrics": main_metrics, "nested": nested, "finished": view.status in FINISHED, "failed": view.status == Status.failed})
