"""Celery app of the worker: `celery -A worker.celery_app worker` or `repscope worker`."""

from __future__ import annotations

import logging
import socket
import sys

from celery import Celery, signals

from repscope.celeryconf import EVALUATE_TASK, celery_config
from repscope.client import Client
from repscope.settings import get_settings

settings = get_settings()
app = Celery("repscope-worker")
app.conf.update(celery_config(settings))

_client: Client | None = None
log = logging.getLogger(__name__)


@signals.worker_init.connect
def check_sandbox(**_: object) -> None:
    """Probe the model sandbox once at start; a kernel that refuses it stops the worker with the opt-out named
    (SystemExit passes through Celery's signal dispatch, which logs and swallows Exceptions)."""
    from worker.sandbox import SandboxError, check_at_start

    try:
        check_at_start(settings)
    except SandboxError as exc:
        log.critical("%s", exc)
        print(f"repscope worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None


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
