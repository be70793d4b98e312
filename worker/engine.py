"""Runs one evaluation end to end: claim over the API, fetch the artifact, run the suite, report.

Talks to the backend only through repscope.Client (DESIGN.md layering). A user's cancel reaches the worker as the
answer to its next PATCH (progress or heartbeat) saying status `cancelled`: the next progress call raises
EvaluationCancelled, the suite unwinds (a sandboxed child is killed), device memory is freed, the worker
acknowledges with status=cancelled and Celery hands it its next task.
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
from repscope.schemas import ClaimResponse, EvaluationRead, EvaluationResultIn, Status
from repscope.settings import Settings
from repscope.suites import EMBED_STEP, IMAGES
from worker.derive import run_embed, run_on_encoder
from worker.suite_runners import runner as suite_runner

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
ERROR_MAX_CHARS = 20000  # EvaluationPatch.error
HEADLINE_MAX_CHARS = 4000
TRACEBACK_HEAD = "Traceback (most recent call last):"  # what traceback.format_exception starts with


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


class EvaluationCancelled(RuntimeError):
    """A user cancelled the evaluation: raised from the suite's next progress call."""


def cancelled(answer: object) -> bool:
    """Whether a PATCH answer says the evaluation was cancelled."""
    return isinstance(answer, EvaluationRead) and answer.status == Status.cancelled


class ThrottledProgress:
    """Progress sink for suites: forwards at most one PATCH a second (also the lease heartbeat) under the lease's
    claim id; raises TimeLimitExceeded past the time limit (Celery's time limits need the prefork pool, and
    workers run solo) and EvaluationCancelled once a PATCH answer (its own or the Heartbeat's) said cancelled.
    `fraction` is the last progress the suite reported."""

    def __init__(self, client: Client, evaluation_id: int, worker: str, claim: str,
                 time_limit_s: float | None = None, cancel: threading.Event | None = None) -> None:
        self.client, self.evaluation_id, self.worker, self.claim = client, evaluation_id, worker, claim
        self.time_limit_s = time_limit_s
        self.deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.cancel = cancel if cancel is not None else threading.Event()
        self.last_sent, self.fraction = 0.0, 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.fraction = min(max(fraction, 0.0), 1.0)
        self.check()
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeLimitExceeded(f"stopped after the time limit of {self.time_limit_s:g} s "
                                    "(REPSCOPE_TASK_TIME_LIMIT_S)")
        if now - self.last_sent >= PROGRESS_EVERY_S:
            self.last_sent = now
            answer = self.client.report(self.evaluation_id, claim=self.claim, worker=self.worker,
                                        progress=self.fraction, message=message[:2000])
            if cancelled(answer):
                self.cancel.set()
            self.check()

    def check(self) -> None:
        if self.cancel.is_set():
            raise EvaluationCancelled(f"evaluation {self.evaluation_id} was cancelled")


def throttled_progress(client: Client, evaluation_id: int, worker: str, claim: str,
                       time_limit_s: float | None = None, cancel: threading.Event | None = None) -> ThrottledProgress:
    return ThrottledProgress(client, evaluation_id, worker, claim, time_limit_s, cancel)


class Heartbeat:
    """Renews the evaluation's lease every `every_s` seconds from a side thread, however long the suite's
    current step takes; a dead worker stops renewing and the API's sweeper hands the evaluation on. An answer
    saying cancelled sets `cancel`, which the suite's next progress call acts on."""

    def __init__(self, client: Client, evaluation_id: int, worker: str, every_s: float, claim: str) -> None:
        self._stop = threading.Event()
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(client, evaluation_id, worker, every_s, claim),
                                        name=f"heartbeat-{evaluation_id}", daemon=True)

    def _beat(self, client: Client, evaluation_id: int, worker: str, every_s: float, claim: str) -> None:
        while not self._stop.wait(every_s):
            try:
                if cancelled(client.report(evaluation_id, claim=claim, worker=worker)):
                    self.cancel.set()
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
    """Returns 'skipped' (someone else has it, or it was cancelled before it started), 'succeeded', 'failed' or
    'cancelled'. The claim tells the API this worker's device and the queue that delivered the task (the jobs
    page shows both)."""
    device = pick_device(settings.device)
    claim = client.claim(evaluation_id, worker_name, device=device, queue=queue)
    if claim is None:
        log.info("evaluation %s already claimed elsewhere, finished or cancelled; skipping", evaluation_id)
        return "skipped"
    with Heartbeat(client, evaluation_id, worker_name, settings.heartbeat_s, claim.claim) as beat:
        return _run_claimed(claim, evaluation_id, client, worker_name, settings, device, beat.cancel)


def _stop_cancelled(claim: ClaimResponse, evaluation_id: int, client: Client, worker_name: str,
                    progress: ThrottledProgress | None, started: float) -> str:
    """Free what the suite held and tell the API where this worker stopped."""
    _free_device_memory()
    fraction = progress.fraction if progress is not None else 0.0
    log.info("evaluation %s cancelled; stopped at %.0f%%", evaluation_id, 100 * fraction)
    try:
        client.report(evaluation_id, claim=claim.claim, worker=worker_name, status="cancelled", progress=fraction,
                      message=f"worker {worker_name} stopped at {fraction:.0%} after "
                              f"{time.perf_counter() - started:.1f} s")
    except RepscopeError as refused:  # retried and claimed again meanwhile: nothing of ours to acknowledge
        log.warning("could not acknowledge the cancel of evaluation %s: %s", evaluation_id, refused)
    return "cancelled"


def _failure_text(exc: BaseException, device: str | None) -> str:
    """The headline users see (exception type and message; for out-of-memory what to do), a blank line, then the
    traceback (the API shows it to admins only), cut from the front to fit."""
    headline = f"{type(exc).__name__}: {exc}"
    if is_out_of_memory(exc):
        _free_device_memory()
        headline = (f"out of memory on {device or 'the worker'}: the suite needed more memory than this worker "
                    f"has (run it on a larger worker, or upload fewer rows / dimensions). {headline}")
    headline = headline[:HEADLINE_MAX_CHARS]
    trace = "".join(traceback.format_exception(exc))
    room = ERROR_MAX_CHARS - len(headline) - 2
    if len(trace) > room:
        trace = trace[:len(TRACEBACK_HEAD)] + "\n  …\n" + trace[-(room - len(TRACEBACK_HEAD) - 5):]
    return f"{headline}\n\n{trace}"


def _run_claimed(claim: ClaimResponse, evaluation_id: int, client: Client, worker_name: str,
                 settings: Settings, device: str, cancel: threading.Event) -> str:
    suite = claim.evaluation.suite
    progress: ThrottledProgress | None = None
    started = time.perf_counter()
    try:
        on_encoder = suite != EMBED_STEP and claim.artifact.kind == "checkpoint"
        run_on = suite_runner(suite, "encoder" if on_encoder else "embeddings") if suite != EMBED_STEP else None
        if cancelled(client.report(evaluation_id, claim=claim.claim, worker=worker_name, progress=0.0,
                                   message=f"loading {claim.artifact.format} artifact")):
            cancel.set()
        progress = throttled_progress(client, evaluation_id, worker_name, claim.claim, settings.task_time_limit_s,
                                      cancel)
        progress.check()
        path = artifact_path(claim, client, settings)
        started = time.perf_counter()
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
        progress.check()  # cancelled during the suite's last stretch: the result is not wanted
        client.post_result(evaluation_id, EvaluationResultIn(claim=claim.claim, worker=worker_name,
                                                             **result.to_json()))
        return "succeeded"
    except EvaluationCancelled:
        pass  # stopped below, once the exception (its traceback holds the suite's tensors) is gone
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable `failed` evaluation
        log.exception("evaluation %s failed", evaluation_id)
        try:
            answer = client.report(evaluation_id, claim=claim.claim, worker=worker_name, status="failed",
                                   error=_failure_text(exc, device))
        except RepscopeError as refused:  # reassigned after our lease expired: the new holder reports
            log.warning("could not mark evaluation %s failed: %s", evaluation_id, refused)
            return "failed"
        if not cancelled(answer):
            return "failed"
        # cancelled meanwhile (e.g. its result was refused): it stays cancelled
    return _stop_cancelled(claim, evaluation_id, client, worker_name, progress, started)
