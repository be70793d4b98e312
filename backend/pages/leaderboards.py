"""Leaderboard pages: the index of boards (one per (project, dataset); ?scope=all: one per (dataset, identity, d)
across projects) and one board with its CSV / JSON export links. A board URL without ?project= redirects to the
only project using the name, or shows a chooser when several do."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import leaderboards as leaderboard_service

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


@router.get("/leaderboards", response_class=HTMLResponse)
def leaderboards_page(request: Request, session: SessionDep, scope: Literal["project", "all"] = "project",
                      project: str | None = None) -> HTMLResponse:
    boards = leaderboard_service.leaderboard_index(session)
    if project:
        boards = [b for b in boards if b["project"] == project]
    return render(request, "leaderboards.html", {
        "scope": scope, "boards": boards, "project": project or "",
        "groups": leaderboard_service.cross_project_index(session) if scope == "all" else [],
        "rules": leaderboard_service.directions_table(), "no_dataset": leaderboard_service.NO_DATASET})


@router.get("/leaderboards/{dataset:path}", response_class=HTMLResponse)
def leaderboard_page(request: Request, dataset: str, session: SessionDep,
                     metric: Annotated[list[str] | None, Query()] = None,
                     pick: Literal["best", "last"] = "last", by: str | None = None, sort: str | None = None,
                     order: Literal["asc", "desc"] | None = None, project: str | None = None,
                     scope: Literal["project", "all"] = "project") -> Response:
    label = "(no dataset named)" if dataset == leaderboard_service.NO_DATASET else dataset
    options = {"pick": pick, "by": by, "sort": sort, "order": order}
    if scope != "all" and not project:
        projects = leaderboard_service.projects_with(session, dataset)
        if len(projects) == 1:  # the old URL: the one project using the name
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "project"]
            target = f"/leaderboards/{quote(dataset)}?" + urlencode([*params, ("project", projects[0])])
            return RedirectResponse(target, status_code=307)
        if projects:
            return render(request, "leaderboard.html", {
                "chooser": projects, "dataset": dataset, "dataset_label": label, "project": "", "scope": scope,
                "rules": leaderboard_service.directions_table()})
    if scope == "all":
        groups = leaderboard_service.cross_project_boards(session, dataset, metric, **options)
        board = groups[0]["board"] if groups else leaderboard_service.leaderboard(session, dataset, metric,
                                                                                   **options)
    else:
        board = leaderboard_service.scoped_leaderboard(session, dataset, project, metric, **options) \
            if project else leaderboard_service.leaderboard(session, dataset, metric, **options)
        groups = [{**g, "board": board, "projects": [project]} for g in board.groups] if project else []
    params = {"metric": board.metrics, "pick": board.pick, "sort": board.sort, "order": board.order}
    if by:
        params["by"] = board.by
    if project and scope != "all":
        params["project"] = project
    if scope == "all":
        params["scope"] = "all"
    api = f"/api/v1/leaderboards/{quote(dataset)}?"
    return render(request, "leaderboard.html", {
        "board": board, "groups": groups, "scope": scope, "project": project or "", "dataset": dataset,
        "rules": leaderboard_service.directions_table(),
        "csv_url": api + urlencode({**params, "format": "csv"}, doseq=True),
        "json_url": api + urlencode({**params, "format": "json"}, doseq=True), "dataset_label": label})
