"""Celery app of the worker: `celery -A worker.celery_app worker` or `repscope worker`."""

from __future__ import annotations

import socket

from celery import Celery

from repscope.celeryconf import EVALUATE_TASK, celery_config
from repscope.client import Client
from repscope.settings import get_settings

settings = get_settings()
app = Celery("repscope-worker")
app.conf.update(celery_config(settings))

_client: Client | None = None


def api_client() -> Client:
    global _client
    if _client is None:
        _client = Client(settings.api_url, token=settings.worker_token)  # else REPSCOPE_TOKEN
    return _client


@app.task(name=EVALUATE_TASK, bind=True)
def evaluate(self, evaluation_id: int) -> str:  # noqa: ANN001
    from worker.engine import run_evaluation

    worker_name = self.request.hostname or f"worker@{socket.gethostname()}"
    queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue
    return run_evaluation(int(evaluation_id), api_client(), worker_name, settings, queue=queue)
