"""The datasets page: every registered dataset, linked to its leaderboard."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import leaderboards as leaderboard_service
from backend.services.datasets import list_datasets

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep) -> HTMLResponse:
    boards = {b["dataset"]: b for b in leaderboard_service.leaderboard_index(session)}
    return render(request, "datasets.html", {
        "datasets": list_datasets(session), "boards": boards, "no_dataset": leaderboard_service.NO_DATASET})
