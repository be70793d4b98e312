from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from backend.api.deps import CanRead, CanWork, CanWrite, QueueDep, SessionDep, SettingsDep, StoreDep
from backend.api.params import SQL_INT_MAX, SqlInt
from backend.models import Evaluation
from backend.security import authenticate
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


def _read(request: Request, session: SessionDep, evaluation: Evaluation, **kwargs: object) -> EvaluationRead:
    """The evaluation for this caller: the traceback behind the error goes to admin tokens only."""
    return service.evaluation_read(evaluation, admin=authenticate(request, session).has("admin"), **kwargs)


@router.get("/evaluations", response_model=Page[EvaluationRead])
def list_evaluations(request: Request, session: SessionDep, run: SqlInt | None = None, suite: str | None = None,
                     status: Status | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0) -> Page[EvaluationRead]:
    items, total = service.list_evaluations(session, run_id=run, suite=suite, status=status, limit=limit,
                                            offset=offset)
    positions = service.queue_positions(session, items)
    return Page(items=[_read(request, session, e, with_result=False, position=positions.get(e.id)) for e in items],
                total=total, limit=limit, offset=offset)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationRead)
def get_evaluation(evaluation_id: SqlInt, request: Request, session: SessionDep) -> EvaluationRead:
    """The evaluation with its metrics and figure data; `error` is the user-facing message (`error_detail`, the
    traceback, for admin tokens only); queued: `queue_position`; running: `elapsed_s` and `eta_s`."""
    return _read(request, session, service.get_evaluation(session, evaluation_id))


@router.post("/evaluations/{evaluation_id}/cancel", dependencies=[CanWrite], response_model=EvaluationRead,
             responses={409: {"description": "Already finished: succeeded or failed"}})
def cancel_evaluation(evaluation_id: SqlInt, request: Request, session: SessionDep) -> EvaluationRead:
    """Cancel a queued evaluation (no worker will run it) or a running one: its worker stops the suite at its next
    progress report, frees its memory and takes its next job (cooperative; the message says when it stopped).
    Cancelling a cancelled evaluation changes nothing."""
    evaluation = service.cancel(session, evaluation_id, authenticate(request, session).name)
    return _read(request, session, evaluation, with_result=False)


@router.post("/evaluations/{evaluation_id}/retry", dependencies=[CanWrite], response_model=EvaluationRead,
             responses={409: {"description": "Not failed or cancelled: queued, running or succeeded"}})
def retry_evaluation(evaluation_id: SqlInt, request: Request, session: SessionDep,
                     queue: QueueDep) -> EvaluationRead:
    """Queue a failed or cancelled evaluation again from scratch (attempts, error and result cleared) at the back
    of its queue."""
    evaluation = service.retry(session, queue, evaluation_id, authenticate(request, session).name)
    return _read(request, session, evaluation, with_result=False)


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
              responses={409: {"description": "Not running (nor cancelled while it ran), held under another claim, "
                                              "or a status other than failed"}})
def patch_evaluation(evaluation_id: SqlInt, body: EvaluationPatch, session: SessionDep) -> EvaluationRead:
    """Worker only, with the lease's claim id: progress, message, or status=failed with an error. Once the
    evaluation is cancelled the answer says status `cancelled` (nothing else changes): the worker stops and
    acknowledges with status=cancelled (its progress and message are kept)."""
    return service.evaluation_read(service.patch(session, evaluation_id, body), with_result=False)


@router.post("/evaluations/{evaluation_id}/result", dependencies=[CanWork], response_model=EvaluationRead,
             responses={409: {"description": "Not running, or held under another claim"}})
def post_result(evaluation_id: SqlInt, body: EvaluationResultIn, session: SessionDep) -> EvaluationRead:
    """Worker only, with the lease's claim id: metrics, figure data, variant and warnings; marks the evaluation
    succeeded."""
    return service.evaluation_read(service.store_result(session, evaluation_id, body))
