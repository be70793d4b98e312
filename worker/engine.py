"""Runs one evaluation end to end: claim over the API, fetch the artifact, run the suite, report.

Talks to the backend only through repscope.Client (DESIGN.md layering).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path

from repscope import suites as registry
from repscope.client import Client, RepscopeError
from repscope.formats import load_embeddings
from repscope.schemas import ClaimResponse, EvaluationResultIn
from repscope.settings import Settings
from repscope.suites import EMBED_STEP, IMAGES
from worker.derive import run_embed, run_on_encoder
from worker.suite_runners import runner as suite_runner
from worker.suites.base import ProgressFn

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


def pick_device(requested: str | None) -> str:
    """The device name to claim with: the configured one, else "cuda" when a GPU is visible, else "cpu"."""
    from worker.suites.common.device import default_device  # torch loads on first use, not on import

    return requested or str(default_device())


def artifact_path(claim: ClaimResponse, client: Client, settings: Settings) -> Path:
    """The shared data dir's file when this worker can see it, else a streamed download cached by sha256."""
    if claim.local_path and Path(claim.local_path).is_file():
        return Path(claim.local_path)
    cache = settings.worker_cache_dir or (settings.data_dir / "worker-cache")
    dest = Path(cache) / f"{claim.artifact.sha256}.{claim.artifact.format}"
    if not dest.is_file():
        client.download(claim.download_url, dest)
    return dest


class TimeLimitExceeded(RuntimeError):
    pass


def throttled_progress(client: Client, evaluation_id: int, worker: str, claim: str,
                       time_limit_s: float | None = None) -> ProgressFn:
    """Progress sink for suites: forwards at most one PATCH a second (also the lease heartbeat) under the
    lease's claim id, and enforces the time limit cooperatively — Celery's time limits need the prefork pool,
    and workers run solo."""
    last = [0.0]
    deadline = time.monotonic() + time_limit_s if time_limit_s else None

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise TimeLimitExceeded(f"stopped after the time limit of {time_limit_s:g} s "
                                    "(REPSCOPE_TASK_TIME_LIMIT_S)")
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            client.report(evaluation_id, claim=claim, worker=worker, progress=min(max(fraction, 0.0), 1.0),
                          message=message[:2000])

    return report


class Heartbeat:
    """Renews the evaluation's lease every `every_s` seconds from a side thread, however long the suite's
    current step takes; a dead worker stops renewing and the API's sweeper hands the evaluation on."""

    def __init__(self, client: Client, evaluation_id: int, worker: str, every_s: float, claim: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(client, evaluation_id, worker, every_s, claim),
                                        name=f"heartbeat-{evaluation_id}", daemon=True)

    def _beat(self, client: Client, evaluation_id: int, worker: str, every_s: float, claim: str) -> None:
        while not self._stop.wait(every_s):
            try:
                client.report(evaluation_id, claim=claim, worker=worker)
            except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal; a lost lease shows at the end
                log.warning("heartbeat for evaluation %s failed: %s", evaluation_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def dataset_images(name: str | None, n: int, client: Client, settings: Settings):  # noqa: ANN201
    """The images of registered dataset `name` when it has exactly `n` of them (row i = image i), else None."""
    if not name:
        return None
    try:
        info = client.dataset(name)
    except RepscopeError:
        return None
    if info.get("n") != n:
        return None
    from worker.derive import fetch_dataset

    return fetch_dataset(name, client, settings).images


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's CPU allocator failure or CUDA's OOM (torch.OutOfMemoryError is a RuntimeError)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_evaluation(evaluation_id: int, client: Client, worker_name: str, settings: Settings,
                   queue: str | None = None) -> str:
    """Returns 'skipped' (someone else has it), 'succeeded' or 'failed'. The claim tells the API this worker's
    device and the queue that delivered the task (the jobs page shows both)."""
    device = pick_device(settings.device)
    claim = client.claim(evaluation_id, worker_name, device=device, queue=queue)
    if claim is None:
        log.info("evaluation %s already claimed elsewhere; skipping", evaluation_id)
        return "skipped"
    with Heartbeat(client, evaluation_id, worker_name, settings.heartbeat_s, claim.claim):
        return _run_claimed(claim, evaluation_id, client, worker_name, settings, device)


def _run_claimed(claim: ClaimResponse, evaluation_id: int, client: Client, worker_name: str,
                 settings: Settings, device: str) -> str:
    suite = claim.evaluation.suite
    try:
        on_encoder = suite != EMBED_STEP and claim.artifact.kind == "checkpoint"
        run_on = suite_runner(suite, "encoder" if on_encoder else "embeddings") if suite != EMBED_STEP else None
        client.report(evaluation_id, claim=claim.claim, worker=worker_name, progress=0.0,
                      message=f"loading {claim.artifact.format} artifact")
        path = artifact_path(claim, client, settings)
        started = time.perf_counter()
        progress = throttled_progress(client, evaluation_id, worker_name, claim.claim, settings.task_time_limit_s)
        if suite == EMBED_STEP:
            result = run_embed(claim, path, client, settings, device, progress)
        elif on_encoder:
            result = run_on_encoder(claim, path, client, settings, device, progress)
        else:
            # validated in full at upload; skip the second finite-value scan here
            arrays = load_embeddings(path, f"artifact.{claim.artifact.format}", check_finite=False)
            params = dict(claim.evaluation.params)
            if IMAGES in registry.get(suite).uses:  # e.g. image-level scores when the rows are a known image dataset
                params["images"] = dataset_images(claim.artifact.dataset, len(arrays.embeddings), client, settings)
            result = run_on(arrays, params, device, progress)
        result.variant.setdefault("device", device)
        result.variant["worker"] = worker_name
        result.variant["seconds"] = round(time.perf_counter() - started, 4)
        client.post_result(evaluation_id, EvaluationResultIn(claim=claim.claim, worker=worker_name,
                                                             **result.to_json()))
        return "succeeded"
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable `failed` evaluation
        log.exception("evaluation %s failed", evaluation_id)
        headline = f"{type(exc).__name__}: {exc}"
        if is_out_of_memory(exc):
            _free_device_memory()
            headline = (f"out of memory on {device or 'the worker'}: the suite needed more memory than this worker "
                        f"has (run it on a larger worker, or upload fewer rows / dimensions). {headline}")
        tail = "".join(traceback.format_exception(exc)[-3:])
        try:
            client.report(evaluation_id, claim=claim.claim, worker=worker_name, status="failed",
                          error=f"{headline}\n\n{tail}"[:20000])
        except RepscopeError as refused:  # reassigned after our lease expired: the new holder reports
            log.warning("could not mark evaluation %s failed: %s", evaluation_id, refused)
        return "failed"
