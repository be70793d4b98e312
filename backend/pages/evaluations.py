"""An evaluation's page: its status with queue position, elapsed time and ETA, cancel / retry (write scope), its
user-facing error (the traceback behind a toggle for admins), its metrics (prefix dimensions as a table), the
suite's charts, and what it derived."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from backend import figures
from backend.api.deps import SessionDep
from backend.api.params import SqlInt
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.security import authenticate
from backend.services import evaluations as evaluation_service
from repscope.schemas import FINISHED, Status

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


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
def evaluation_page(request: Request, evaluation_id: SqlInt, session: SessionDep) -> HTMLResponse:
    evaluation = evaluation_service.get_evaluation(session, evaluation_id)
    principal = authenticate(request, session)
    view = evaluation_service.evaluation_read(evaluation, admin=principal.has("admin"))
    figs = (view.result or {}).get("figures", {})
    charts = figures.suite_charts(evaluation.suite, figs)
    main_metrics = {k: v for k, v in view.metrics.items() if "@d" not in k}
    nested = _nested_table(view.metrics, evaluation.artifact.meta.get("d"))
    derived = evaluation_service.derived_evaluations(session, evaluation.artifact_id)
    return render(request, "evaluation.html", {
        "evaluation": view, "artifact": evaluation.artifact, "run": evaluation.artifact.run, "charts": charts,
        "main_metrics": main_metrics, "nested": nested, "finished": view.status in FINISHED,
        "failed": view.status == Status.failed, "derived": derived, "can_write": principal.has("write")})
