"""The sweeper: the database is the source of truth, the broker only transport.

Every `sweep_interval_s` it (1) re-sends evaluations still `queued` `requeue_after_s` after they were last
sent (the broker lost them: Redis restarted, a publish failed), and (2) puts back `running` evaluations whose
worker stopped reporting for `lease_s` (the worker died), failing them after `max_attempts`.
Re-sending is safe: a claim is atomic, so a duplicate delivery finds nothing to do.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from backend.models import Evaluation
from backend.queue import TaskQueue
from backend.services.evaluations import now
from repscope.schemas import Status
from repscope.settings import Settings

log = logging.getLogger(__name__)


def sweep_once(session: Session, queue: TaskQueue, settings: Settings) -> dict[str, int]:
    t = now()
    counts = {"resent": 0, "recovered": 0, "failed": 0}
    lost = session.scalars(select(Evaluation).where(
        Evaluation.status == Status.running.value,
        Evaluation.heartbeat_at < t - timedelta(seconds=settings.lease_s))).all()
    for evaluation in lost:
        evaluation.claim_hash = None  # the lost worker's claim id stops working; a re-claim issues a new one
        if evaluation.attempts >= settings.max_attempts:
            evaluation.status = Status.failed.value
            evaluation.error = (f"worker {evaluation.worker} stopped reporting; gave up after "
                                f"{evaluation.attempts} attempts")
            evaluation.finished_at = t
            counts["failed"] += 1
        else:
            evaluation.status = Status.queued.value
            evaluation.message = f"requeued: worker {evaluation.worker} stopped reporting"
            evaluation.enqueued_at = None
            evaluation.queued_at = t  # back of the queue (the order of queue positions)
            counts["recovered"] += 1
    session.commit()

    due = session.scalars(select(Evaluation).where(
        Evaluation.status == Status.queued.value,
        or_(Evaluation.enqueued_at.is_(None),
            Evaluation.enqueued_at < t - timedelta(seconds=settings.requeue_after_s)))
        .order_by(Evaluation.id).limit(1000)).all()
    for evaluation in due:
        if queue.send_evaluation(evaluation):
            evaluation.enqueued_at = t
            counts["resent"] += 1
    session.commit()
    return counts


class Sweeper:
    """Runs sweep_once on a daemon thread until stopped."""

    def __init__(self, factory: sessionmaker[Session], queue: TaskQueue, settings: Settings) -> None:
        self.factory, self.queue, self.settings = factory, queue, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="repscope-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                with self.factory() as session:
                    counts = sweep_once(session, self.queue, self.settings)
                if any(counts.values()):
                    log.info("sweeper: %s", counts)
            except Exception:  # noqa: BLE001 - the sweeper must outlive a database hiccup
                log.exception("sweeper pass failed")
