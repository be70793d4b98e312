from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from backend.api.deps import CanRead, SessionDep
from backend.services import leaderboards as service

router = APIRouter(tags=["leaderboards"], dependencies=[CanRead])


@router.get("/leaderboards")
def list_leaderboards(session: SessionDep) -> list[dict]:
    """Datasets with evaluated embeddings (`-` = uploaded without a dataset name), with run counts."""
    return service.leaderboard_index(session)


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
    project: Annotated[str | None, Query(description="only this project's runs")] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",  # noqa: A002
) -> Response:
    """One row per run on `dataset` (`-` = embeddings uploaded without a dataset), Borda rank across the
    chosen metrics: per metric, one point per run beaten, 0.5 per tie, a value beats a missing value."""
    board = service.leaderboard(session, dataset, metric, pick=pick, by=by, sort=sort, order=order,
                                project=project)
    if format == "csv":
        name = quote(f"leaderboard-{dataset}-{board.pick}.csv".replace("/", "_"))
        return Response(service.to_csv(board), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}"})
    return JSONResponse({**board.to_json(), "direction_rules": service.directions_table()})
