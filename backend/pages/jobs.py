"""The jobs page: evaluations by state, retries, recent results, and the evaluation workers seen.

`/jobs/live` re-renders the page's body with its own Jinja macro for static/live.js to swap in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import macros, render
from backend.services import jobs as job_service
from repscope.schemas import Status

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


def _jobs(session: Session) -> dict[str, Any]:
    return {"counts": job_service.status_counts(session),
            "running": job_service.evaluations(session, status=Status.running),
            "queued": job_service.evaluations(session, status=Status.queued),
            "failed": job_service.evaluations(session, status=Status.failed),
            "retried": job_service.evaluations(session, retried=True),
            "recent": job_service.recent(session),
            "workers": job_service.worker_summaries(session)}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "jobs.html", _jobs(session))


@router.get("/jobs/live")
def jobs_live(request: Request, session: SessionDep) -> JSONResponse:
    jobs = _jobs(session)
    pending = jobs["counts"]["queued"] + jobs["counts"]["running"] > 0
    return JSONResponse({"pending": pending, "workers": [w.to_json() for w in jobs["workers"]],
                         "html": {"jobs-body": str(macros(request).jobs_body(**jobs))}})
