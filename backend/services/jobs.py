"""The job queue as the dashboard shows it: evaluations by state, retries, and the workers seen with their device."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, joinedload

from backend.models import Artifact, Evaluation, Run
from backend.services.evaluations import now
from repscope.schemas import Status

ACTIVE_WITHIN = timedelta(hours=1)


@dataclass
class WorkerSeen:
    name: str
    device: str | None       # from the newest finished result's variant["device"] (None before any result)
    last_seen: datetime | None
    active: bool             # heartbeat within ACTIVE_WITHIN
    running: int
    succeeded: int
    failed: int


def _aware(t: datetime | None) -> datetime | None:
    if t is not None and t.tzinfo is None:  # SQLite returns naive datetimes; they were stored in UTC
        return t.replace(tzinfo=UTC)
    return t


def status_counts(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in Status}
    counts.update(dict(session.execute(select(Evaluation.status, func.count()).group_by(Evaluation.status)).all()))
    counts["retried"] = session.scalar(select(func.count()).where(Evaluation.attempts > 1)) or 0
    return counts


def evaluations(session: Session, *, status: Status | None = None, retried: bool = False,
                limit: int = 100) -> list[Evaluation]:
    """Evaluations with their artifact, run and project loaded (one query); queued oldest first, else newest."""
    stmt = select(Evaluation).options(joinedload(Evaluation.artifact).joinedload(Artifact.run).joinedload(Run.project))
    if status is not None:
        stmt = stmt.where(Evaluation.status == status.value)
    if retried:
        stmt = stmt.where(Evaluation.attempts > 1)
    stmt = stmt.order_by(Evaluation.id.asc() if status is Status.queued else Evaluation.id.desc())
    return list(session.scalars(stmt.limit(limit)).unique())


def workers(session: Session) -> list[WorkerSeen]:
    """Every worker named on an evaluation, newest first, with the device its latest result ran on."""
    seen = func.max(func.coalesce(Evaluation.heartbeat_at, Evaluation.finished_at, Evaluation.started_at))
    rows = session.execute(
        select(Evaluation.worker, seen,
               func.sum(case((Evaluation.status == Status.running.value, 1), else_=0)),
               func.sum(case((Evaluation.status == Status.succeeded.value, 1), else_=0)),
               func.sum(case((Evaluation.status == Status.failed.value, 1), else_=0)))
        .where(Evaluation.worker.is_not(None)).group_by(Evaluation.worker)).all()
    t = now()
    out = []
    for name, last, running, succeeded, failed in rows:
        result = session.scalar(select(Evaluation.result).where(Evaluation.worker == name,
                                                                Evaluation.status == Status.succeeded.value)
                                .order_by(Evaluation.id.desc()).limit(1))
        device = ((result or {}).get("variant") or {}).get("device")
        last = _aware(last)
        out.append(WorkerSeen(name=name, device=str(device) if device is not None else None, last_seen=last,
                              active=last is not None and t - last < ACTIVE_WITHIN, running=int(running or 0),
                              succeeded=int(succeeded or 0), failed=int(failed or 0)))
    return sorted(out, key=lambda w: w.last_seen or datetime.min.replace(tzinfo=t.tzinfo), reverse=True)
