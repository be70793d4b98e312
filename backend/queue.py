"""Job submission: send `repscope.evaluate(evaluation_id)` to the broker by name (no worker import)."""

from __future__ import annotations

import logging

from celery import Celery

from repscope.celeryconf import EVALUATE_TASK, celery_config
from repscope.settings import Settings

log = logging.getLogger(__name__)


class TaskQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery("repscope-api")
        self.app.conf.update(celery_config(settings))

    def send_evaluation(self, evaluation_id: int) -> bool:
        """Publish one evaluation. A broker outage is logged, not raised: the row stays `queued`
        and the sweeper sends it again once the broker is back."""
        try:
            self.app.send_task(EVALUATE_TASK, args=[evaluation_id], queue=self.settings.queue,
                               retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
            return True
        except Exception as exc:  # noqa: BLE001 - any broker failure must not lose the upload
            log.warning("could not publish evaluation %s: %s", evaluation_id, exc)
            return False

    def ping(self) -> str:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return "ok"
        except Exception as exc:  # noqa: BLE001
            return f"unreachable: {exc}"
