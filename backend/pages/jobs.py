"""The jobs page: evaluations by state with queue position, elapsed time and ETA, cancel and retry buttons (write
scope), retries, recent results with their user-facing error (the traceback behind a toggle for admins), and the
evaluation workers seen.

`/jobs/live` re-renders the page's body with its own Jinja macro (frontend/templates/_queue.html) for
static/live.js to swap in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.security import authenticate
from backend.services import jobs as job_service
from repscope.schemas import Status

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


def _jobs(request: Request, session: Session) -> dict[str, Any]:
    principal = authenticate(request, session)

    def rows(evaluations: list) -> list[job_service.JobRow]:
        return job_service.rows(session, evaluations, admin=principal.has("admin"))

    return {"counts": job_service.status_counts(session),
            "running": rows(job_service.evaluations(session, status=Status.running)),
            "queued": rows(job_service.evaluations(session, status=Status.queued)),
            "failed": rows(job_service.evaluations(session, status=Status.failed)),
            "retried": rows(job_service.evaluations(session, retried=True)),
            "recent": rows(job_service.recent(session)),
            "workers": job_service.worker_summaries(session),
            "can_write": principal.has("write")}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "jobs.html", _jobs(request, session))


@router.get("/jobs/live")
def jobs_live(request: Request, session: SessionDep) -> JSONResponse:
    jobs = _jobs(request, session)
    pending = jobs["counts"]["queued"] + jobs["counts"]["running"] > 0
    fragments = request.app.state.templates.env.get_template("_queue.html").module
    return JSONResponse({"pending": pending, "workers": [w.to_json() for w in jobs["workers"]],
                         "html": {"jobs-body": str(fragments.jobs_body(**jobs))}})
