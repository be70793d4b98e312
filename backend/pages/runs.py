"""A run's page and its live part: artifacts with their evaluations, the queue summary, and every chart.

`/runs/{id}/live` re-renders the live rows with the page's own Jinja macros and static/live.js swaps them in,
so nothing reloads the whole page while the user reads; charts are sent only when the run's metric rows changed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from backend import figures
from backend.api.deps import SessionDep
from backend.api.params import SqlInt
from backend.models import Run
from backend.pages.auth import page_reader
from backend.pages.templates import macros, render
from backend.security import authenticate
from backend.services import compare as compare_service
from backend.services import metrics as metric_service
from backend.services import runs as run_service
from backend.services.artifacts import list_run_artifacts
from repscope.schemas import Status

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


def _run_live(session: Session, run: Run, since: str | None = None) -> dict[str, Any]:
    """Artifacts with their evaluations (two queries), status counts, and — unless the caller already has this
    `version` of the run's metric rows — every chart."""
    artifacts = list_run_artifacts(session, run.id, with_evaluations=True)
    evaluations = [e for a in artifacts for e in a.evaluations]
    counts = {s.value: sum(e.status == s.value for e in evaluations) for s in Status}
    live: dict[str, Any] = {"artifacts": artifacts, "counts": counts,
                            "version": compare_service.series_version(session, run.id),
                            "pending": counts["queued"] + counts["running"] > 0}
    if since == live["version"]:
        return live
    charts, nested = figures.run_charts(compare_service.all_series(session, run.id),
                                        metric_service.step_anchors(session, run.id))
    if not charts:  # no blank axis: a note saying how metrics get here
        charts = [figures.empty_run_chart(run.id)]
    return {**live, "charts": charts, "nested": nested}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: SqlInt, session: SessionDep) -> HTMLResponse:
    run = run_service.get_run(session, run_id)
    live = _run_live(session, run)
    return render(request, "run.html", {
        "run": run, **live, "metric_keys": sorted(compare_service.all_series(session, run_id)),
        "can_write": authenticate(request, session).has("write")})


@router.get("/runs/{run_id}/live")
def run_live(request: Request, run_id: SqlInt, session: SessionDep, since: str | None = None) -> JSONResponse:
    """What the run page updates in place: artifact rows with evaluation status and progress, the queue summary,
    and the charts — sent only when the run's metric rows changed since the caller's `since` version."""
    run = run_service.get_run(session, run_id)
    live = _run_live(session, run, since)
    m = macros(request)
    body = {"pending": live["pending"], "version": live["version"],
            "html": {"artifacts-body": str(m.artifact_rows(live["artifacts"])),
                     "queue-summary": str(m.queue_summary(live["counts"]))}}
    if "charts" in live:
        body.update(charts=live["charts"], nested=live["nested"])
    return JSONResponse(body)
