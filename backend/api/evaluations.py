from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from backend.api.deps import CanRead, CanWork, SessionDep, SettingsDep, StoreDep
from backend.api.params import SQL_INT_MAX, SqlInt
from backend.services import evaluations as service
from backend.services.artifacts import artifact_read
from repscope.schemas import (
    ClaimRequest,
    ClaimResponse,
    EvaluationPatch,
    EvaluationRead,
    EvaluationResultIn,
    Page,
    Status,
)

router = APIRouter(tags=["evaluations"], dependencies=[CanRead])


@router.get("/evaluations", response_model=Page[EvaluationRead])
def list_evaluations(session: SessionDep, run: SqlInt | None = None, suite: str | None = None,
                     status: Status | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0) -> Page[EvaluationRead]:
    items, total = service.list_evaluations(session, run_id=run, suite=suite, status=status, limit=limit,
                                            offset=offset)
    return Page(items=[service.evaluation_read(e, with_result=False) for e in items], total=total,
                limit=limit, offset=offset)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationRead)
def get_evaluation(evaluation_id: SqlInt, session: SessionDep) -> EvaluationRead:
    return service.evaluation_read(service.get_evaluation(session, evaluation_id))


@router.post("/evaluations/{evaluation_id}/claim", dependencies=[CanWork], response_model=ClaimResponse,
             responses={409: {"description": "Not claimable: another delivery holds it, or it has finished"}})
def claim_evaluation(evaluation_id: SqlInt, body: ClaimRequest, request: Request, session: SessionDep,
                     store: StoreDep, settings: SettingsDep) -> ClaimResponse:
    """Worker only: take the evaluation (409 when another delivery already has it). The answer's `claim` id must
    accompany every PATCH, result and derived-embeddings upload of this lease."""
    evaluation, claim_id = service.claim(session, evaluation_id, body.worker, settings.lease_s,
                                         device=body.device, queue=body.queue)
    artifact = evaluation.artifact
    return ClaimResponse(
        claim=claim_id,
        evaluation=service.evaluation_read(evaluation, with_result=False),
        artifact=artifact_read(artifact),
        local_path=str(store.path(artifact.storage_key)),
        download_url=str(request.url_for("download_artifact", artifact_id=artifact.id)),
    )


@router.patch("/evaluations/{evaluation_id}", dependencies=[CanWork], response_model=EvaluationRead,
              responses={409: {"description": "Not running, held under another claim, or a status other than "
                                              "failed"}})
def patch_evaluation(evaluation_id: SqlInt, body: EvaluationPatch, session: SessionDep) -> EvaluationRead:
    """Worker only, with the lease's claim id: progress, message, or status=failed with an error."""
    return service.evaluation_read(service.patch(session, evaluation_id, body), with_result=False)


@router.post("/evaluations/{evaluation_id}/result", dependencies=[CanWork], response_model=EvaluationRead,
             responses={409: {"description": "Not running, or held under another claim"}})
def post_result(evaluation_id: SqlInt, body: EvaluationResultIn, session: SessionDep) -> EvaluationRead:
    """Worker only, with the lease's claim id: metrics, figure data, variant and warnings; marks the evaluation
    succeeded."""
    return service.evaluation_read(service.store_result(session, evaluation_id, body))
