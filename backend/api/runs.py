from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from backend.api.deps import CanRead, CanWrite, SessionDep, StoreDep
from backend.api.params import SQL_INT_MAX, SqlInt
from backend.security import authenticate
from backend.services import metrics as metric_service
from backend.services import runs as run_service
from backend.services.artifacts import artifact_read, list_run_artifacts
from repscope.schemas import (
    ArtifactRead,
    MetricSeries,
    MetricsLog,
    Page,
    ProjectRead,
    RunCreate,
    RunDeleted,
    RunRead,
    RunUpdate,
)

router = APIRouter(tags=["runs"], dependencies=[CanRead])


@router.get("/projects", response_model=list[ProjectRead])
def list_projects(session: SessionDep) -> list[ProjectRead]:
    return run_service.list_projects(session)


@router.post("/runs", response_model=RunRead, dependencies=[CanWrite], status_code=200,
             responses={201: {"model": RunRead, "description": "run created"},
                        409: {"description": 'The run exists with another config: {"detail", "differing_keys"}'}})
def create_run(body: RunCreate, session: SessionDep, response: Response) -> RunRead | JSONResponse:
    """Get-or-create a run by (project, name): 201 when created, 200 when it already existed (new tags merged in).
    An existing run with another non-empty config answers 409 with the differing top-level keys, unless
    `update` is true: then its config is replaced by this one."""
    try:
        run, created = run_service.get_or_create_run(session, body)
    except run_service.ConfigConflict as exc:
        return JSONResponse({"detail": str(exc), "differing_keys": exc.differing_keys}, status_code=409)
    response.status_code = 201 if created else 200
    return run_service.run_read(run)


@router.get("/runs", response_model=Page[RunRead])
def list_runs(session: SessionDep, project: str | None = None, tag: str | None = None, q: str | None = None,
              archived: Annotated[run_service.Archived, Query(
                  description="false: live runs only (default); true: archived runs only; all: both")] = "false",
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0) -> Page[RunRead]:
    items, total = run_service.list_runs(session, project=project, tag=tag, q=q, archived=archived, limit=limit,
                                         offset=offset)
    return Page(items=[run_service.run_read(r) for r in items], total=total, limit=limit, offset=offset)


@router.get("/runs/{run_id}", response_model=RunRead)
def get_run(run_id: SqlInt, session: SessionDep) -> RunRead:
    return run_service.run_read(run_service.get_run(session, run_id))


@router.patch("/runs/{run_id}", response_model=RunRead, dependencies=[CanWrite],
              responses={409: {"description": "Another run of the project already has that name"}})
def update_run(run_id: SqlInt, body: RunUpdate, session: SessionDep) -> RunRead:
    """Rename, set notes (an empty string clears them), replace the tags, archive (`archived: true`: hidden from
    listings unless asked for) or restore. Only the fields sent change."""
    return run_service.run_read(run_service.update_run(session, run_id, body))


@router.delete("/runs/{run_id}", response_model=RunDeleted, dependencies=[CanWrite])
def delete_run(run_id: SqlInt, request: Request, session: SessionDep, store: StoreDep) -> RunDeleted:
    """Delete the run, its metrics, evaluations and artifacts. Its queued and running evaluations are cancelled
    first; stored files that no other artifact or dataset shares are removed. Cannot be undone."""
    counts = run_service.delete_run(session, store, run_id, authenticate(request, session).name)
    return RunDeleted(id=run_id, **counts)


@router.get("/runs/{run_id}/metrics", response_model=MetricSeries | list[str])
def run_metrics(run_id: SqlInt, session: SessionDep, key: str | None = None, dataset: str | None = None,
                source: Annotated[metric_service.Source | None, Query(
                    description="computed (evaluations) or logged (the training job's own scalars)")] = None,
                ) -> MetricSeries | list[str]:
    """With `key`: that metric over training step (only `dataset`'s points when given; each point names its
    dataset). Without: the metric keys this run has (of `source` only, when given).

    `source` picks the namespace: `computed` (by repscope's evaluations) or `logged` (POSTed by the training
    job; a logged scalar never replaces a computed metric of the same name). Default: `computed` when `key` is
    in the metric catalogue (rankme, alpha_req, linear_top1, knnK_topK, ...) or an evaluation of this run
    produced it, else `logged`; the response's `source` says which."""
    run_service.get_run(session, run_id)
    if key is None:
        return metric_service.keys(session, run_id, source)
    return metric_service.series(session, run_id, key, dataset, source)


@router.post("/runs/{run_id}/metrics", status_code=201, dependencies=[CanWrite])
def log_run_metrics(run_id: SqlInt, body: MetricsLog, session: SessionDep) -> dict[str, int]:
    """Scalars from the training job itself (loss, learning rate...), charted beside the computed metrics."""
    run_service.get_run(session, run_id)
    try:
        stored = metric_service.log_metrics(session, run_id, body.step, body.metrics)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"stored": stored}


@router.get("/runs/{run_id}/artifacts", response_model=list[ArtifactRead])
def run_artifacts(run_id: SqlInt, session: SessionDep) -> list[ArtifactRead]:
    run_service.get_run(session, run_id)
    return [artifact_read(a) for a in list_run_artifacts(session, run_id)]
