from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from backend.api.deps import CanRead, SessionDep
from backend.services import leaderboards as service

router = APIRouter(tags=["leaderboards"], dependencies=[CanRead])


Scope = Literal["project", "all"]
SCOPE_HELP = ("project (default): one project's runs on the dataset name; all: across projects, one board per "
              "(dataset identity, embedding dimension d) — runs are mixed only when both match")


@router.get("/leaderboards")
def list_leaderboards(session: SessionDep,
                      scope: Annotated[Scope, Query(description=SCOPE_HELP)] = "project") -> list[dict]:
    """scope=project: one board per (project, dataset name) with embeddings (`-` = uploaded without a dataset
    name), with run counts. scope=all: one cross-project board per (dataset name, identity, d)."""
    return service.cross_project_index(session) if scope == "all" else service.leaderboard_index(session)


def resolve_project(session, dataset: str, project: str | None) -> str | None:  # noqa: ANN001
    """The project a board without ?project= means: the only project using the name (None when none does);
    409 listing the projects when several do (the name alone is ambiguous)."""
    if project:
        return project
    projects = service.projects_with(session, dataset)
    if len(projects) > 1:
        raise HTTPException(409, detail={
            "message": f"dataset name {dataset!r} is used by {len(projects)} projects: pass ?project= or "
                       "?scope=all (cross-project boards by dataset identity and d)", "projects": projects})
    return projects[0] if projects else None


@router.get("/leaderboards/{dataset:path}", responses={200: {"content": {"text/csv": {}}}})
def get_leaderboard(
    dataset: str, session: SessionDep,
    # a plain array (no `| None`): a query string has no null, and schema tools read one `metric=x` as ["x"]
    metric: Annotated[list[str], Query(max_length=service.MAX_METRICS,
                                       description="metric columns (repeat); default rankme, "
                                                   "linear_top1, knn20_top1 where present")] = [],  # noqa: B006
    pick: Annotated[Literal["best", "last"], Query(description="per run: the last step, or the step "
                                                               "where `by` is best")] = "last",
    by: Annotated[str | None, Query(description="pick=best: the metric that picks the step "
                                                "(default: the first metric)")] = None,
    sort: Annotated[str | None, Query(description="borda (default), rank, run, project, step or a metric")] = None,
    order: Annotated[Literal["asc", "desc"] | None, Query(description="default: best first")] = None,
    project: Annotated[str | None, Query(description="this project's runs (default: the only project using "
                                                      "the name; 409 when several do)")] = None,
    scope: Annotated[Scope, Query(description=SCOPE_HELP)] = "project",
    format: Annotated[Literal["json", "csv"], Query()] = "json",  # noqa: A002
) -> Response:
    """One row per run on `dataset` (`-` = embeddings uploaded without a dataset) in one project, Borda rank
    across the chosen metrics: per metric, one point per run beaten, 0.5 per tie, a value beats a missing value.
    scope=all: `boards`, one per (dataset identity, d) across projects (CSV: identity and d columns first)."""
    options = {"pick": pick, "by": by, "sort": sort, "order": order}
    if scope == "all":
        boards = service.cross_project_boards(session, dataset, metric, **options)
        if format == "csv":
            name = quote(f"leaderboard-{dataset}-all-{pick}.csv".replace("/", "_"))
            return Response(service.cross_csv(boards), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}"})
        return JSONResponse({"dataset": dataset, "scope": "all",
                             "boards": [{**g, "board": g["board"].to_json()} for g in boards],
                             "direction_rules": service.directions_table()})
    project = resolve_project(session, dataset, project)
    board = service.scoped_leaderboard(session, dataset, project, metric, **options) if project else \
        service.leaderboard(session, dataset, metric, **options)
    if format == "csv":
        name = quote(f"leaderboard-{dataset}-{board.pick}.csv".replace("/", "_"))
        return Response(service.to_csv(board), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}"})
    return JSONResponse({**board.to_json(), "direction_rules": service.directions_table()})
