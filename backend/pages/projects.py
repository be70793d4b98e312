"""Pages of projects: the project list, a project's runs table, and its label-free selection view."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from backend import figures
from backend.api.deps import SessionDep
from backend.api.params import SQL_INT_MAX
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import compare as compare_service
from backend.services import runs as run_service
from backend.services import runs_table as table_service
from backend.services import selection as selection_service

PAGE_SIZE = 50

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "projects.html", {"projects": run_service.list_projects(session)})


@router.get("/projects/{name}", response_class=HTMLResponse)
def project_page(request: Request, name: str, session: SessionDep, q: str | None = None, tag: str | None = None,
                 sort: str = "created", order: Literal["asc", "desc"] | None = None,
                 mode: Literal["latest", "best"] = "latest",
                 archived: Annotated[bool, Query(description="also list archived runs")] = False,
                 page: Annotated[int, Query(ge=1, le=SQL_INT_MAX // PAGE_SIZE)] = 1) -> HTMLResponse:
    started = time.perf_counter()
    project = run_service.get_project(session, name)
    table = table_service.runs_table(session, project.id, q=q, tag=tag, sort=sort, order=order, limit=PAGE_SIZE,
                                     offset=(page - 1) * PAGE_SIZE, mode=mode, archived=None if archived else False)
    return render(request, "project.html", {
        "project": project, "table": table, "runs": table.runs, "q": q or "", "tag": tag or "", "page": page,
        "archived": archived, "n_archived": run_service.count_archived(session, project.id),
        "pages": max(1, -(-table.total // PAGE_SIZE)), "total": table.total,
        "metric_keys": table_service.project_metric_keys(session, project.id),
        "tags": table_service.project_tags(session, project.id),
        "query_ms": (time.perf_counter() - started) * 1000,
        "min_compare": compare_service.MIN_COMPARE, "max_compare": compare_service.MAX_COMPARE})


@router.get("/projects/{name}/selection", response_class=HTMLResponse)
def selection_page(request: Request, name: str, session: SessionDep, probe: str | None = None) -> HTMLResponse:
    project = run_service.get_project(session, name)
    keys = table_service.project_metric_keys(session, project.id, source="computed")  # probes: computed only
    probes = [k for k in selection_service.PROBE_KEYS if k in keys]
    probe = probe if probe in keys else (probes[0] if probes else None)
    results = selection_service.selection(session, project, probe) if probe else []
    charts = [figures.selection_scatter(a.key, a.probe, [(p.run, p.step, p.x, p.y) for p in a.pairs], a.rho, a.tau)
              for a in results]
    return render(request, "selection.html", {
        "project": project, "probe": probe, "probes": probes, "results": results, "charts": charts})
