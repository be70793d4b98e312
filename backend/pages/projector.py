"""The embedding projector of a run: two steps side by side (`/runs/{id}/projector?steps=a,b`), coloured alike,
so one sees how the space evolved. A single evaluation's projector is on its own page (evaluation.html)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from backend import projector
from backend.api.deps import SessionDep
from backend.api.params import SqlInt
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import projector as projector_service
from backend.services import runs as run_service

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])
MAX_PANELS = 2


def _chosen(steps: str | None, available: list[int]) -> list[int]:
    """`a,b` as steps (ValueError when malformed); by default the first and the last step with a result."""
    if not steps:
        return sorted({available[0], available[-1]}) if available else []
    try:
        chosen = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"steps must be integers separated by a comma, got {steps!r}") from None
    if not 1 <= len(chosen) <= MAX_PANELS:
        raise ValueError(f"pick 1 or {MAX_PANELS} steps, got {len(chosen)}")
    return chosen


@router.get("/runs/{run_id}/projector", response_class=HTMLResponse)
def projector_page(request: Request, run_id: SqlInt, session: SessionDep, steps: str | None = None) -> HTMLResponse:
    run = run_service.get_run(session, run_id)
    available = {s.step: s.evaluation_id for s in projector_service.projector_steps(session, run_id)}
    context = {"run": run, "steps": list(available), "chosen": [], "evaluations": {}, "projector": None,
               "error": None}
    try:
        chosen = _chosen(steps, list(available))
    except ValueError as exc:
        return render(request, "projector.html", {**context, "error": str(exc)}, status_code=400)
    missing = [s for s in chosen if s not in available]
    if missing:
        return render(request, "projector.html", {**context, "error": "no finished projector evaluation at step "
                      f"{', '.join(map(str, missing))}"}, status_code=404)
    panels = [(f"step {s}", projector_service.projector_figures(session, available[s])) for s in chosen]
    return render(request, "projector.html", {
        **context, "chosen": chosen, "evaluations": {s: available[s] for s in chosen},
        "projector": projector.projector_views(panels) if panels else None})
