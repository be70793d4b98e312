"""Leaderboard pages: the index of boards (one per dataset) and one board with its CSV / JSON export links."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import leaderboards as leaderboard_service

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


@router.get("/leaderboards", response_class=HTMLResponse)
def leaderboards_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "leaderboards.html", {
        "boards": leaderboard_service.leaderboard_index(session), "rules": leaderboard_service.directions_table(),
        "no_dataset": leaderboard_service.NO_DATASET})


@router.get("/leaderboards/{dataset:path}", response_class=HTMLResponse)
def leaderboard_page(request: Request, dataset: str, session: SessionDep,
                     metric: Annotated[list[str] | None, Query()] = None,
                     pick: Literal["best", "last"] = "last", by: str | None = None, sort: str | None = None,
                     order: Literal["asc", "desc"] | None = None, project: str | None = None) -> HTMLResponse:
    board = leaderboard_service.leaderboard(session, dataset, metric, pick=pick, by=by, sort=sort, order=order,
                                            project=project or None)
    params = {"metric": board.metrics, "pick": board.pick, "sort": board.sort, "order": board.order}
    if by:
        params["by"] = board.by
    if project:
        params["project"] = project
    api = f"/api/v1/leaderboards/{dataset}?"
    return render(request, "leaderboard.html", {
        "board": board, "project": project or "", "rules": leaderboard_service.directions_table(),
        "csv_url": api + urlencode({**params, "format": "csv"}, doseq=True),
        "json_url": api + urlencode({**params, "format": "json"}, doseq=True),
        "dataset_label": "(no dataset named)" if dataset == leaderboard_service.NO_DATASET else dataset})
