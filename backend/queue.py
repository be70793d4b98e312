"""Job submission: send `repscope.evaluate(evaluation_id)` to the broker by name (no worker import).

Routing: with `light_queue` set, evaluations of the light suites (`light_suites`, default spectrum) go to
`light_queue` (CPU workers) and everything else — the checkpoint `embed` step, probes, equivariance,
backdoor — to `queue` (GPU workers). Without it every evaluation goes to `queue`.
"""

from __future__ import annotations

import logging

from celery import Celery

from backend.models import Evaluation
from repscope.celeryconf import EVALUATE_TASK, celery_config
from repscope.settings import Settings

log = logging.getLogger(__name__)


def queue_for(suite: str, settings: Settings) -> str:
    """The Celery queue an evaluation of `suite` is sent to."""
    if settings.light_queue and suite in settings.light_suite_names:
        return settings.light_queue
    return settings.queue


class TaskQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery("repscope-api")
        self.app.conf.update(celery_config(settings))

    def send_evaluation(self, evaluation: Evaluation) -> str | None:
        """Publish one evaluation to its suite's queue and record that queue on the row (the caller commits).

        Returns the queue name, or None when the broker is unreachable: the outage is logged, not raised, the
        row stays `queued` and the sweeper sends it again once the broker is back."""
        queue = queue_for(evaluation.suite, self.settings)
        try:
            self.app.send_task(EVALUATE_TASK, args=[evaluation.id], queue=queue,
                               retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        except Exception as exc:  # noqa: BLE001 - any broker failure must not lose the upload
            log.warning("could not publish evaluation %s to %s: %s", evaluation.id, queue, exc)
            return None
        evaluation.queue = queue
        return queue

    def ping(self) -> str:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return "ok"
        except Exception as exc:  # noqa: BLE001
            return f"unreachable: {exc}"
