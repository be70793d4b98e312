"""The job queue as the dashboard shows it: evaluations by state (with queue position, elapsed time, ETA and the
user-facing error), retries, and the workers seen with their device."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, joinedload

from backend.models import Artifact, Evaluation, Run
from backend.services import worker_registry
from backend.services.evaluations import aware as _aware
from backend.services.evaluations import now, queue_positions, split_error, timing
from repscope.schemas import FINISHED, Status

ACTIVE_WITHIN = timedelta(hours=1)


@dataclass
class WorkerSummary:
    name: str
    device: str | None       # as reported on its claims; else the newest result's variant["device"]
    queues: str | None       # comma list of the queues it took work from (None before it reported one)
    last_seen: datetime | None
    active: bool             # claim or heartbeat within ACTIVE_WITHIN
    running: int
    succeeded: int
    failed: int

    def to_json(self) -> dict[str, object]:
        """The row as /jobs/live sends it (ISO time)."""
        return {"name": self.name, "device": self.device, "queues": self.queues,
                "last_seen": self.last_seen.isoformat() if self.last_seen else None, "active": self.active,
                "running": self.running, "succeeded": self.succeeded, "failed": self.failed}


@dataclass
class JobRow:
    """One evaluation as a jobs table shows it."""

    e: Evaluation                # with artifact, run and project loaded
    position: int | None         # queued: 1 + queued evaluations ahead on its queue
    elapsed_s: float | None      # since the claim (running) or how long it ran (finished)
    eta_s: float | None          # running, from 5 % progress on
    error: str | None            # the user-facing message (no file paths)
    error_detail: str | None     # the traceback: admins only, else None


def rows(session: Session, evaluations: list[Evaluation], *, admin: bool = False) -> list[JobRow]:
    """The evaluations as table rows, queue positions in one query; the traceback only when `admin`."""
    positions = queue_positions(session, evaluations)
    t = now()
    out = []
    for e in evaluations:
        elapsed, eta = timing(e, t)
        message, detail = split_error(e.error)
        out.append(JobRow(e=e, position=positions.get(e.id), elapsed_s=elapsed, eta_s=eta, error=message,
                          error_detail=detail if admin else None))
    return out


def status_counts(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in Status}
    counts.update(dict(session.execute(select(Evaluation.status, func.count()).group_by(Evaluation.status)).all()))
    counts["retried"] = session.scalar(select(func.count()).where(Evaluation.attempts > 1)) or 0
    return counts


def evaluations(session: Session, *, status: Status | None = None, retried: bool = False,
                limit: int = 100) -> list[Evaluation]:
    """Evaluations with their artifact, run and project loaded (one query); queued in queue order, else newest first."""
    stmt = select(Evaluation).options(joinedload(Evaluation.artifact).joinedload(Artifact.run).joinedload(Run.project))
    if status is not None:
        stmt = stmt.where(Evaluation.status == status.value)
    if retried:
        stmt = stmt.where(Evaluation.attempts > 1)
    if status is Status.queued:  # the order of queue positions
        stmt = stmt.order_by(func.coalesce(Evaluation.queued_at, Evaluation.created_at), Evaluation.id)
    else:
        stmt = stmt.order_by(Evaluation.id.desc())
    return list(session.scalars(stmt.limit(limit)).unique())


def recent(session: Session, limit: int = 20) -> list[Evaluation]:
    """The latest finished evaluations (newest first), with their worker, device and queue."""
    stmt = (select(Evaluation)
            .options(joinedload(Evaluation.artifact).joinedload(Artifact.run).joinedload(Run.project))
            .where(Evaluation.status.in_([s.value for s in FINISHED]))
            .order_by(Evaluation.finished_at.desc().nulls_last(), Evaluation.id.desc()))
    return list(session.scalars(stmt.limit(limit)).unique())


def _evaluation_counts(session: Session) -> dict[str, tuple]:
    """Per worker named on an evaluation: (last activity, running, succeeded, failed)."""
    seen = func.max(func.coalesce(Evaluation.heartbeat_at, Evaluation.finished_at, Evaluation.started_at))
    rows = session.execute(
        select(Evaluation.worker, seen,
               func.sum(case((Evaluation.status == Status.running.value, 1), else_=0)),
               func.sum(case((Evaluation.status == Status.succeeded.value, 1), else_=0)),
               func.sum(case((Evaluation.status == Status.failed.value, 1), else_=0)))
        .where(Evaluation.worker.is_not(None)).group_by(Evaluation.worker)).all()
    return {name: tuple(rest) for name, *rest in rows}


def _result_device(session: Session, name: str) -> str | None:
    """The device of the worker's newest succeeded result (for a worker whose claims named no device)."""
    result = session.scalar(select(Evaluation.result).where(Evaluation.worker == name,
                                                            Evaluation.status == Status.succeeded.value)
                            .order_by(Evaluation.id.desc()).limit(1))
    device = ((result or {}).get("variant") or {}).get("device")
    return str(device) if device is not None else None


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in map(_aware, times) if t is not None]
    return max(known) if known else None


def worker_summaries(session: Session) -> list[WorkerSummary]:
    """Every worker that introduced itself on a claim or is named on an evaluation, most recently seen first,
    with its device, its queues and its evaluation counts."""
    counts = _evaluation_counts(session)
    registered = {w.name: w for w in worker_registry.registered(session)}
    t = now()
    out = []
    for name in set(counts) | set(registered):
        last, running, succeeded, failed = counts.get(name, (None, 0, 0, 0))
        row = registered.get(name)
        device = row.device if row is not None and row.device else _result_device(session, name)
        last = _latest(last, row.last_seen if row is not None else None)
        out.append(WorkerSummary(name=name, device=device, queues=row.queues if row is not None else None,
                              last_seen=last, active=last is not None and t - last < ACTIVE_WITHIN,
                              running=int(running or 0), succeeded=int(succeeded or 0), failed=int(failed or 0)))
    return sorted(out, key=lambda w: (w.last_seen or datetime.min.replace(tzinfo=UTC), w.name), reverse=True)
