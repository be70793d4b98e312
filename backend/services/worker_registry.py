"""The registry of evaluation workers (the `workers` table): a worker is one process consuming evaluation tasks
(a Celery worker started by `repscope worker` or `repscope serve`), known by the name it claims under. A claim
names the worker, its device and the queue the task came from; every claim and heartbeat renews `last_seen`.
The jobs page reads these rows (backend.services.jobs.worker_summaries)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import Worker

MAX_QUEUES_CHARS = 500


def merge_queues(current: str | None, queue: str | None) -> str | None:
    """The sorted comma list of `current` plus `queue` (a worker may consume several queues)."""
    names = {q for q in (current or "").split(",") if q}
    if queue:
        names.add(queue)
    return ",".join(sorted(names))[:MAX_QUEUES_CHARS] or None


def _upsert(session: Session, name: str, device: str | None, queue: str | None, at: datetime) -> None:
    worker = session.scalar(select(Worker).where(Worker.name == name))
    if worker is None:
        worker = Worker(name=name, first_seen=at)
        session.add(worker)
    worker.last_seen = at
    if device:
        worker.device = device
    worker.queues = merge_queues(worker.queues, queue)
    session.flush()


def record_claim(session: Session, name: str, *, device: str | None, queue: str | None, at: datetime) -> None:
    """Create or update the worker's row and commit. Two API replicas may insert the same new worker at once:
    the loser's unique-name violation is retried as an update."""
    for attempt in range(2):
        try:
            _upsert(session, name, device, queue, at)
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if attempt:
                raise


def touch(session: Session, name: str | None, at: datetime) -> None:
    """Renew `last_seen` of a known worker (a heartbeat or result); the caller commits."""
    if name:
        session.execute(update(Worker).where(Worker.name == name).values(last_seen=at))


def registered(session: Session) -> list[Worker]:
    """Every worker that ever claimed an evaluation."""
    return list(session.scalars(select(Worker)))
