"""Evaluation life cycle: queued -> running (claimed by one worker) -> succeeded | failed.

Claims are a single conditional UPDATE, so two deliveries of the same task (broker redelivery, sweeper
re-send) cannot both run it. Each claim issues a random claim id (only its sha256 is stored): every PATCH,
result and derived-embeddings upload must present it, so a worker whose lease expired, or any other worker
token, cannot write to an evaluation it does not hold. Results replace the evaluation's Metric rows in one
transaction, so a retried POST never duplicates them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation, Metric
from backend.services import Conflict, NotFound, worker_registry
from repscope.schemas import EvaluationPatch, EvaluationRead, EvaluationResultIn, Status


def now() -> datetime:
    return datetime.now(UTC)


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def evaluation_read(evaluation: Evaluation, *, with_result: bool = True) -> EvaluationRead:
    artifact = evaluation.artifact
    return EvaluationRead(
        id=evaluation.id, artifact_id=evaluation.artifact_id, run_id=artifact.run_id, step=artifact.step,
        suite=evaluation.suite, params=evaluation.params or {}, status=Status(evaluation.status),
        progress=evaluation.progress, message=evaluation.message, error=evaluation.error,
        attempts=evaluation.attempts, worker=evaluation.worker, queue=evaluation.queue, device=evaluation.device,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at, finished_at=evaluation.finished_at,
        metrics={m.key: m.value for m in evaluation.metrics},
        result=evaluation.result if with_result else None,
    )


def derived_evaluations(session: Session, artifact_id: int) -> list[Evaluation]:
    """Evaluations of the artifacts derived from `artifact_id` (a checkpoint's embeddings), oldest first."""
    return list(session.scalars(select(Evaluation).join(Artifact, Evaluation.artifact_id == Artifact.id)
                                .where(Artifact.parent_id == artifact_id).order_by(Evaluation.id)))


def list_evaluations(session: Session, *, run_id: int | None = None, suite: str | None = None,
                     status: Status | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Evaluation], int]:
    stmt = select(Evaluation).join(Artifact)
    if run_id is not None:
        stmt = stmt.where(Artifact.run_id == run_id)
    if suite:
        stmt = stmt.where(Evaluation.suite == suite)
    if status:
        stmt = stmt.where(Evaluation.status == status.value)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    items = session.scalars(stmt.order_by(Evaluation.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total


def claim_hash(claim_id: str) -> str:
    return hashlib.sha256(claim_id.encode("utf-8")).hexdigest()


def claim(session: Session, evaluation_id: int, worker: str, lease_s: float, *, device: str | None = None,
          queue: str | None = None) -> tuple[Evaluation, str]:
    """Atomically move a queued (or lease-expired running) evaluation to running for this worker under a new
    claim id, and record the worker with the device and queue it reported. Returns the evaluation and the id."""
    t = now()
    stale = t - timedelta(seconds=lease_s)
    claim_id = secrets.token_urlsafe(24)
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id,
               or_(Evaluation.status == Status.queued.value,
                   and_(Evaluation.status == Status.running.value, Evaluation.heartbeat_at < stale)))
        .values(status=Status.running.value, worker=worker, attempts=Evaluation.attempts + 1,
                started_at=t, heartbeat_at=t, progress=0.0, message="claimed", error=None, device=device,
                claim_hash=claim_hash(claim_id))
    )
    session.commit()
    evaluation = get_evaluation(session, evaluation_id)
    if result.rowcount != 1:
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}, not claimable")
    worker_registry.record_claim(session, worker, device=device, queue=queue, at=t)
    session.refresh(evaluation)
    return evaluation, claim_id


def check_claim(evaluation: Evaluation, claim_id: str | None) -> None:
    """Only the holder of the current lease writes: a missing claim id, or one from an expired lease (the
    evaluation was claimed again since), is a Conflict."""
    if evaluation.status != Status.running.value:
        raise Conflict(f"evaluation {evaluation.id} is {evaluation.status}; only a running evaluation's claim "
                       "holder may write to it")
    if not claim_id:
        raise Conflict(f"evaluation {evaluation.id}: no claim id sent; send the 'claim' the claim returned")
    if not evaluation.claim_hash or not hmac.compare_digest(evaluation.claim_hash, claim_hash(claim_id)):
        raise Conflict(f"evaluation {evaluation.id} is held under another claim (now by worker "
                       f"{evaluation.worker}); this claim id is wrong or its lease expired")


def patch(session: Session, evaluation_id: int, body: EvaluationPatch) -> Evaluation:
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.status != Status.running.value:
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}; only running evaluations take updates")
    check_claim(evaluation, body.claim)
    if body.progress is not None:
        evaluation.progress = body.progress
    if body.message is not None:
        evaluation.message = body.message
    evaluation.heartbeat_at = now()
    worker_registry.touch(session, evaluation.worker, evaluation.heartbeat_at)
    if body.status is not None:
        if body.status not in (Status.failed, Status.running):
            raise Conflict("a PATCH may only set status 'failed'; results are POSTed to /result")
        if body.status is Status.failed:
            evaluation.status = Status.failed.value
            evaluation.error = body.error or "failed without an error message"
            evaluation.finished_at = now()
    session.commit()
    return evaluation


def store_result(session: Session, evaluation_id: int, body: EvaluationResultIn) -> Evaluation:
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.status != Status.running.value:
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}; results are accepted only while running")
    check_claim(evaluation, body.claim)
    artifact = evaluation.artifact
    finite = {k: v for k, v in body.metrics.items() if math.isfinite(v)}
    undefined = sorted(set(body.metrics) - set(finite))
    session.execute(delete(Metric).where(Metric.evaluation_id == evaluation_id))
    session.add_all(Metric(evaluation_id=evaluation_id, run_id=artifact.run_id, step=artifact.step, key=k, value=v)
                    for k, v in finite.items())
    evaluation.result = {"figures": body.figures, "variant": body.variant, "warnings": body.warnings,
                         "undefined_metrics": undefined}
    evaluation.status = Status.succeeded.value
    evaluation.progress = 1.0
    evaluation.message = "done"
    evaluation.finished_at = evaluation.heartbeat_at = now()
    worker_registry.touch(session, evaluation.worker, evaluation.finished_at)
    session.commit()
    session.refresh(evaluation)
    return evaluation


def workers_seen(session: Session, within: timedelta = timedelta(hours=1)) -> list[str]:
    rows = session.scalars(select(Evaluation.worker).where(
        Evaluation.worker.is_not(None), Evaluation.heartbeat_at > now() - within).distinct())
    return sorted(w for w in rows if w)
