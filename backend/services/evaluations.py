"""Evaluation life cycle: queued -> running (claimed by one worker) -> succeeded | failed, and cancelled at any
point before that; a failed or cancelled evaluation can be queued again (retry).

Claims are a single conditional UPDATE, so two deliveries of the same task (broker redelivery, sweeper
re-send) cannot both run it. Each claim issues a random claim id (only its sha256 is stored): every PATCH,
result and derived-embeddings upload must present it, so a worker whose lease expired, or any other worker
token, cannot write to an evaluation it does not hold. Results replace the evaluation's Metric rows in one
transaction, so a retried POST never duplicates them.

Queue control (issue #20): a cancelled queued evaluation is never claimed (its Celery task finds nothing to do); a
cancelled running one keeps its claim so its worker's next PATCH (progress or heartbeat) answers status
`cancelled`: the worker stops the suite there and acknowledges with status=cancelled. Reads carry the queue
position, elapsed time and ETA, and split the stored error into the user-facing message and the traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, object_session

from backend.models import Artifact, Evaluation, Metric
from backend.services import Conflict, NotFound, worker_registry
from repscope.schemas import FINISHED, EvaluationPatch, EvaluationRead, EvaluationResultIn, Status

if TYPE_CHECKING:
    from backend.queue import TaskQueue

ETA_MIN_PROGRESS = 0.05  # below 5 % the elapsed / progress extrapolation is mostly start-up (loading) time
USER_ERROR_MAX_CHARS = 4000
TRACEBACK_HEAD = "Traceback (most recent call last):"
# where the traceback behind a worker's headline starts: the full one, or the 3-entry tail older workers stored
TRACEBACK_STARTS = ("\n" + TRACEBACK_HEAD, '\n\n  File "')
# an absolute (or ~) file path, not part of a URL or a fraction like "8192/20000": shown by its last part only
FILE_PATH = re.compile(r"(?<![\w:/.~-])~?/(?:[\w.@+-]+/)+([\w.@+-]*)")
CANCEL_PENDING = "; the worker stops at its next progress report"
CANCELLABLE = (Status.queued.value, Status.running.value)
RETRYABLE = (Status.failed.value, Status.cancelled.value)


def now() -> datetime:
    return datetime.now(UTC)


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def aware(t: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; they were stored in UTC."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return t


def without_paths(text: str) -> str:
    """`text` with every absolute file path cut to its last part ('/srv/data/x/a.npz' -> '…/a.npz')."""
    return FILE_PATH.sub(lambda m: "…/" + m.group(1), text)


def split_error(error: str | None) -> tuple[str | None, str | None]:
    """(user-facing message, traceback) of a stored error. The worker stores its headline, a blank line, then the
    traceback; the message is the headline (the last line when the text is a bare traceback), file paths cut;
    the detail is the traceback (the whole text when the message had to be cut from it), else None."""
    if not error or not error.strip():
        return error, None
    text = error.strip()
    cut = min((i for i in (text.find(mark) for mark in TRACEBACK_STARTS) if i >= 0), default=len(text))
    head = text[:cut].strip()
    if not head or head.startswith(TRACEBACK_HEAD):
        head, cut = [line for line in text.splitlines() if line.strip()][-1].strip(), 0
    message = without_paths(head)[:USER_ERROR_MAX_CHARS]
    trace = text[cut:].strip()
    return message, (trace if trace and trace != message else text if text != message else None)


def timing(evaluation: Evaluation, at: datetime | None = None) -> tuple[float | None, float | None]:
    """(elapsed_s, eta_s): seconds since the claim while running (to finished_at once finished; None while
    queued), and, while running with progress p >= ETA_MIN_PROGRESS, the remaining time elapsed / p x (1 - p)."""
    started = aware(evaluation.started_at)
    if started is None or evaluation.status == Status.queued.value:
        return None, None
    end = aware(evaluation.finished_at) if evaluation.status in FINISHED else (at or now())
    if end is None:
        return None, None
    elapsed = max((end - started).total_seconds(), 0.0)
    p = evaluation.progress or 0.0
    eta = elapsed / p * (1.0 - p) if evaluation.status == Status.running.value and ETA_MIN_PROGRESS <= p < 1 else None
    return elapsed, eta


def queue_positions(session: Session, evaluations: Iterable[Evaluation]) -> dict[int, int]:
    """{id: 1 + queued evaluations ahead of it on its queue} for the queued ones, in one query: FIFO by the time
    each joined its queue (upload, retry, sweeper requeue; the broker's order), then by id."""
    ids = [e.id for e in evaluations if e.status == Status.queued.value]
    if not ids:
        return {}
    order = (func.coalesce(Evaluation.queued_at, Evaluation.created_at), Evaluation.id)
    ranked = (select(Evaluation.id, func.row_number().over(partition_by=Evaluation.queue, order_by=order)
                     .label("position"))
              .where(Evaluation.status == Status.queued.value).subquery())
    return {i: int(p) for i, p in session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(ids)))}


def evaluation_read(evaluation: Evaluation, *, with_result: bool = True, admin: bool = False,
                    position: int | None = None, at: datetime | None = None) -> EvaluationRead:
    """The evaluation as the API sends it: `error` is the user-facing message and `error_detail` (the traceback)
    is filled for admins only; a queued one's position is computed here unless given (lists batch it)."""
    artifact = evaluation.artifact
    session = object_session(evaluation)
    if position is None and evaluation.status == Status.queued.value and session is not None:
        position = queue_positions(session, [evaluation]).get(evaluation.id)
        if position is None:  # claimed (or cancelled) in between: send the state it is in now
            session.refresh(evaluation)
    message, detail = split_error(evaluation.error)
    elapsed, eta = timing(evaluation, at)
    return EvaluationRead(
        id=evaluation.id, artifact_id=evaluation.artifact_id, run_id=artifact.run_id, step=artifact.step,
        suite=evaluation.suite, params=evaluation.params or {}, status=Status(evaluation.status),
        progress=evaluation.progress, message=evaluation.message, error=message,
        attempts=evaluation.attempts, worker=evaluation.worker, queue=evaluation.queue, device=evaluation.device,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at, finished_at=evaluation.finished_at,
        metrics={m.key: m.value for m in evaluation.metrics},
        result=evaluation.result if with_result else None,
        error_detail=detail if admin else None, queue_position=position,
        elapsed_s=None if elapsed is None else round(elapsed, 3), eta_s=None if eta is None else round(eta, 3),
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


def check_claim(evaluation: Evaluation, claim_id: str | None, *, status: str = Status.running.value) -> None:
    """Only the holder of the current lease writes: a missing claim id, or one from an expired lease (the
    evaluation was claimed again since), is a Conflict."""
    if evaluation.status != status:
        raise Conflict(f"evaluation {evaluation.id} is {evaluation.status}; only a {status} evaluation's claim "
                       "holder may write to it")
    if not claim_id:
        raise Conflict(f"evaluation {evaluation.id}: no claim id sent; send the 'claim' the claim returned")
    if not evaluation.claim_hash or not hmac.compare_digest(evaluation.claim_hash, claim_hash(claim_id)):
        raise Conflict(f"evaluation {evaluation.id} is held under another claim (now by worker "
                       f"{evaluation.worker}); this claim id is wrong or its lease expired")


def _patch_cancelled(session: Session, evaluation: Evaluation, body: EvaluationPatch) -> Evaluation:
    """A PATCH from the claim holder of an evaluation cancelled while it ran: the answer (status cancelled) is how
    the worker learns of the cancel, and nothing changes, except that status=cancelled acknowledges that it
    stopped: the progress it reached and its message go on the row."""
    check_claim(evaluation, body.claim, status=Status.cancelled.value)
    if body.status is Status.cancelled:
        if body.progress is not None:
            evaluation.progress = body.progress
        stopped = body.message or "the worker stopped"
        evaluation.message = f"{(evaluation.message or 'cancelled').removesuffix(CANCEL_PENDING)}; {stopped}"[:2000]
        evaluation.heartbeat_at = now()
        worker_registry.touch(session, evaluation.worker, evaluation.heartbeat_at)
        session.commit()
    return evaluation


def patch(session: Session, evaluation_id: int, body: EvaluationPatch) -> Evaluation:
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.status == Status.cancelled.value:
        return _patch_cancelled(session, evaluation, body)
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
            raise Conflict("a PATCH may only set status 'failed' ('cancelled' only acknowledges a cancel); results "
                           "are POSTed to /result")
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


def cancel(session: Session, evaluation_id: int, by: str) -> Evaluation:
    """Cancel a queued evaluation (it is never claimed) or a running one (its worker stops at its next progress
    report, which answers `cancelled`); a cancelled one is returned as it is. Conflict once it has finished."""
    get_evaluation(session, evaluation_id)
    t = now()
    for was, message in ((Status.queued.value, f"cancelled by {by} before it started"),
                         (Status.running.value, f"cancelled by {by}{CANCEL_PENDING}")):
        changed = session.execute(update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.status == was)
                                  .values(status=Status.cancelled.value, finished_at=t, message=message[:2000]))
        session.commit()
        if changed.rowcount == 1:
            break
    evaluation = get_evaluation(session, evaluation_id)
    session.refresh(evaluation)
    if evaluation.status != Status.cancelled.value:
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}: only a queued or running evaluation can "
                       "be cancelled")
    return evaluation


def retry(session: Session, queue: TaskQueue, evaluation_id: int, by: str) -> Evaluation:
    """Queue a failed or cancelled evaluation again, from scratch (attempts, error, metrics and result cleared),
    and send it to its queue (the sweeper re-sends it should the broker be down). Conflict in any other state."""
    was = get_evaluation(session, evaluation_id).status
    changed = session.execute(
        update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.status.in_(RETRYABLE))
        .values(status=Status.queued.value, progress=0.0, error=None, result=None, attempts=0, worker=None,
                device=None, claim_hash=None, started_at=None, heartbeat_at=None, finished_at=None, enqueued_at=None,
                queued_at=now(),
                message=f"queued again by {by} (it {'had failed' if was == Status.failed.value else 'was cancelled'})"
                [:2000]))
    if changed.rowcount != 1:
        session.rollback()
        evaluation = get_evaluation(session, evaluation_id)
        session.refresh(evaluation)
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}: only a failed or cancelled evaluation can "
                       "be retried")
    session.execute(delete(Metric).where(Metric.evaluation_id == evaluation_id))
    session.commit()
    evaluation = get_evaluation(session, evaluation_id)
    session.refresh(evaluation)
    if queue.send_evaluation(evaluation):
        evaluation.enqueued_at = now()
    session.commit()
    return evaluation


def workers_seen(session: Session, within: timedelta = timedelta(hours=1)) -> list[str]:
    rows = session.scalars(select(Evaluation.worker).where(
        Evaluation.worker.is_not(None), Evaluation.heartbeat_at > now() - within).distinct())
    return sorted(w for w in rows if w)
