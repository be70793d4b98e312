"""Python client for the repscope REST API: training jobs log embeddings, workers report results.

Needs only numpy and httpx (torch only to save an nn.Module). Arrays are streamed from memory as the request
body goes out; uploads carry an Idempotency-Key and are retried with backoff, so a flaky network never stores
or evaluates anything twice.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from repscope.checkpoint_upload import checkpoint_fields, checkpoint_file
from repscope.schemas import (
    FINISHED,
    ClaimRequest,
    ClaimResponse,
    EvaluationPatch,
    EvaluationRead,
    EvaluationResultIn,
    MetricSeries,
    RunRead,
    Status,
    UploadAccepted,
)
from repscope.streams import array_body
from repscope.suites import EMBED_STEP

log = logging.getLogger("repscope")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0, write=300.0)
RETRY_STATUS = {429, 502, 503, 504}


class RepscopeError(RuntimeError):
    """The server refused a request; `status_code` and `detail` say why."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class EvaluationFailed(RepscopeError):
    pass


class RunConfigConflict(RepscopeError):
    """`Client.run` named an existing run whose stored config differs (409): `differing_keys` lists the top-level
    keys. Pass `update=True` to replace the stored config, or pick another run name."""

    def __init__(self, detail: str, differing_keys: list[str]) -> None:
        super().__init__(409, f"{detail} (Client.run(..., update=True) replaces the stored config)")
        self.differing_keys = differing_keys


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise RepscopeError(response.status_code, str(detail))


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx.Response, cap: float = 60.0) -> float:
    """Seconds from a Retry-After header (delta-seconds form), 0 without one."""
    try:
        return min(max(float(response.headers.get("retry-after", 0)), 0.0), cap)
    except ValueError:
        return 0.0


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class _ProgressReader:
    """File wrapper that reports how many bytes httpx has read for the request body."""

    def __init__(self, fh: Any, callback: Callable[[int], None]) -> None:
        self._fh, self._callback, self._sent = fh, callback, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._sent += len(chunk)
        self._callback(self._sent)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


class Client:
    def __init__(self, url: str | None = None, *, token: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retries: int = 5, backoff: float = 0.5) -> None:
        self.url = (url or os.environ.get("REPSCOPE_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.retries, self.backoff = retries, backoff
        token = token or os.environ.get("REPSCOPE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # runs and results -------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return _check(self.http.get("/health")).json()

    def run(self, project: str, name: str, config: dict[str, Any] | None = None, tags: Iterable[str] = (), *,
            update: bool = False, background: bool = True, max_pending: int = 8) -> RunHandle:
        """Get or create the run (project, name). get-or-create is idempotent, so it is retried. An existing run
        whose stored config differs from a non-empty `config` raises RunConfigConflict, unless `update=True`
        (then the stored config is replaced by this one); new tags are merged in."""
        body = {"project": project, "name": name, "config": config or {}, "tags": list(tags), "update": update}
        response = self._send(lambda: self.http.post("/runs", json=body))
        if response.status_code == 409 and "differing_keys" in (payload := _json_or_empty(response)):
            raise RunConfigConflict(str(payload.get("detail", "")), list(payload["differing_keys"]))
        info = RunRead.model_validate(_check(response).json())
        return RunHandle(self, info, background=background, max_pending=max_pending)

    def get_run(self, run_id: int) -> RunRead:
        return RunRead.model_validate(_check(self._send(lambda: self.http.get(f"/runs/{run_id}"))).json())

    def update_run(self, run_id: int, *, name: str | None = None, notes: str | None = None,
                   tags: Iterable[str] | None = None, archived: bool | None = None) -> RunRead:
        """Rename (409 when the project has a run of that name), set notes ("" clears them), replace the tags,
        archive (hidden from listings by default) or restore (`archived=False`). Write scope."""
        body = {k: v for k, v in {"name": name, "notes": notes, "tags": None if tags is None else list(tags),
                                  "archived": archived}.items() if v is not None}
        return RunRead.model_validate(_check(self._send(lambda: self.http.patch(f"/runs/{run_id}", json=body))).json())

    def delete_run(self, run_id: int) -> dict[str, int]:
        """Delete a run with its metrics, evaluations and artifacts (its queued and running evaluations are
        cancelled first; stored files no other artifact shares are removed). Cannot be undone. Write scope.
        Returns the counts deleted. Not retried (a second try answers 404)."""
        return _check(self.http.delete(f"/runs/{run_id}")).json()

    def evaluation(self, evaluation_id: int) -> EvaluationRead:
        response = self._send(lambda: self.http.get(f"/evaluations/{evaluation_id}"))
        return EvaluationRead.model_validate(_check(response).json())

    def cancel(self, evaluation_id: int) -> EvaluationRead:
        """Cancel a queued or running evaluation (write scope): a queued one never runs, a running one stops at its
        worker's next progress report. Cancelling a cancelled one changes nothing; a finished one is a 409."""
        response = self._send(lambda: self.http.post(f"/evaluations/{evaluation_id}/cancel"))
        return EvaluationRead.model_validate(_check(response).json())

    def retry(self, evaluation_id: int) -> EvaluationRead:
        """Queue a failed or cancelled evaluation again from scratch (write scope); any other state is a 409. Not
        retried on a lost connection (a second retry of a queued evaluation is refused)."""
        response = self.http.post(f"/evaluations/{evaluation_id}/retry")
        return EvaluationRead.model_validate(_check(response).json())

    def wait(self, evaluation_ids: Iterable[int], *, timeout: float = 600.0, poll: float = 0.5,
             raise_on_failure: bool = True) -> list[EvaluationRead]:
        """Block until every evaluation is finished; raises EvaluationFailed (or TimeoutError)."""
        evaluation_ids = list(evaluation_ids)
        pending = list(evaluation_ids)
        done: dict[int, EvaluationRead] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for eid in list(pending):
                ev = self.evaluation(eid)
                if ev.status in FINISHED:
                    done[eid] = ev
                    pending.remove(eid)
                    if raise_on_failure and ev.status == Status.failed:
                        raise EvaluationFailed(200, f"evaluation {eid} ({ev.suite}) failed: {ev.error}")
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"evaluations {pending} not finished after {timeout:.0f} s")
                time.sleep(poll)
        return [done[e] for e in evaluation_ids]

    def runs(self, *, project: str | None = None, tag: str | None = None, q: str | None = None,
             archived: str = "false", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of runs; `archived`: "false" (live runs only, the default), "true" (archived only) or "all"."""
        params = {k: v for k, v in {"project": project, "tag": tag, "q": q, "archived": archived, "limit": limit,
                                    "offset": offset}.items() if v is not None}
        return _check(self.http.get("/runs", params=params)).json()

    def _send(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        """Send with retries: connection errors and 429/502/503/504 are retried with exponential backoff, or
        after the server's Retry-After (capped at a minute) when it sends one, as a rate-limited 429 does.
        Only idempotent requests come here (GETs, and uploads carrying an Idempotency-Key)."""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff * 2**attempt, 30.0)
            try:
                response = request()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RepscopeError(0, f"cannot reach {self.url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    return response
                wait = max(wait, _retry_after(response))
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _form(self, kind: str, step: int, dataset: str | None, suites: Iterable[str] | None,
              extra: dict[str, str] | None) -> dict[str, str]:
        data = {"kind": kind, "step": str(step), **(extra or {})}
        if dataset:
            data["dataset"] = dataset
        if suites is not None:
            data["suites"] = ",".join(suites)
        return data

    def upload_file(self, run_id: int, path: str | os.PathLike, *, step: int = 0, kind: str = "embeddings",
                    dataset: str | None = None, suites: Iterable[str] | None = None,
                    progress: Callable[[int], None] | None = None, extra: dict[str, str] | None = None,
                    idempotency_key: str | None = None) -> UploadAccepted:
        """Stream a file as multipart/form-data; `progress(bytes_sent)` is called as the body goes out.
        `extra`: more form fields. Checkpoints: arch, arch_kwargs, checkpoint_key, pool, output, views, mean, std,
        resize, crop, interpolation (repscope.checkpoint_upload.checkpoint_fields builds them). Workers uploading the embeddings an
        embed step produced: `evaluation` (the embed evaluation's id) and `claim` (its claim id), with a worker
        token; the server then sets step, dataset, suites, parent checkpoint and embedding-cache key itself
        (`parent` and `cache_key` fields are refused with a 422).
        With an `idempotency_key` a failed attempt is retried and never stored or evaluated twice; reusing a key
        with another file or other fields, or from another token, is a 409."""
        path = Path(path)
        data = self._form(kind, step, dataset, suites, extra)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

        def attempt() -> httpx.Response:
            with path.open("rb") as fh:
                body = _ProgressReader(fh, progress) if progress else fh
                return self.http.post(f"/runs/{run_id}/artifacts", data=data, headers=headers,
                                      files={"file": (path.name, body, "application/octet-stream")})

        response = self._send(attempt) if idempotency_key else attempt()
        return UploadAccepted.model_validate(_check(response).json())

    def upload_arrays(self, run_id: int, arrays: dict[str, np.ndarray], *, step: int = 0,
                      dataset: str | None = None, suites: Iterable[str] | None = None,
                      idempotency_key: str | None = None) -> UploadAccepted:
        """Upload arrays streamed straight from memory as .npy / .npz (see repscope.streams)."""
        data = self._form("embeddings", step, dataset, suites, None)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

        def attempt() -> httpx.Response:
            name, reader = array_body(arrays)
            return self.http.post(f"/runs/{run_id}/artifacts", data=data, headers=headers,
                                  files={"file": (name, reader, "application/octet-stream")})

        response = self._send(attempt) if idempotency_key else attempt()
        return UploadAccepted.model_validate(_check(response).json())

    def dataset(self, name: str) -> dict[str, Any]:
        return _check(self.http.get(f"/datasets/{name}")).json()

    def datasets(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/datasets")).json()

    # worker side ------------------------------------------------------------------------------
    def claim(self, evaluation_id: int, worker: str, *, device: str | None = None,
              queue: str | None = None) -> ClaimResponse | None:
        """Take an evaluation, saying where this worker runs it (device) and which queue delivered it;
        None when another delivery already has it (409). The answer's `claim` id goes with every report,
        result and derived upload of this lease."""
        body = ClaimRequest(worker=worker, device=device, queue=queue).model_dump(exclude_none=True)
        response = self.http.post(f"/evaluations/{evaluation_id}/claim", json=body)
        if response.status_code == 409:
            return None
        return ClaimResponse.model_validate(_check(response).json())

    def report(self, evaluation_id: int, *, claim: str, **fields: Any) -> EvaluationRead:
        """PATCH progress / message / status=failed under the lease's claim id (409 once the lease is lost). The
        answer's status is `cancelled` once a user cancelled the evaluation: stop, and acknowledge with
        status="cancelled"."""
        body = EvaluationPatch(claim=claim, **fields).model_dump(exclude_none=True, mode="json")
        return EvaluationRead.model_validate(_check(self.http.patch(f"/evaluations/{evaluation_id}", json=body)).json())

    def post_result(self, evaluation_id: int, result: EvaluationResultIn) -> EvaluationRead:
        """POST the result; `result.claim` must be the lease's claim id."""
        response = self.http.post(f"/evaluations/{evaluation_id}/result", json=result.model_dump(mode="json"))
        return EvaluationRead.model_validate(_check(response).json())

    def download(self, url: str, dest: Path) -> Path:
        """Stream an artifact to `dest` (written to a temp name, renamed when complete)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", url) as response:
            if not response.is_success:
                response.read()
                _check(response)
            with partial.open("wb") as fh:
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
        os.replace(partial, dest)
        return dest


class Upload:
    """Handle of one logged artifact. With a background uploader it resolves when the upload is done;
    iterating it (or `ids()`) blocks until then and yields the queued evaluation ids."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._accepted: UploadAccepted | None = None
        self._error: BaseException | None = None

    def _resolve(self, accepted: UploadAccepted | None = None, error: BaseException | None = None) -> None:
        self._accepted, self._error = accepted, error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> UploadAccepted:
        if not self._done.wait(timeout):
            raise TimeoutError("upload still in progress")
        if self._error is not None:
            raise self._error
        assert self._accepted is not None
        return self._accepted

    def ids(self, timeout: float | None = None) -> list[int]:
        return [e.id for e in self.result(timeout).evaluations]

    def __iter__(self):  # noqa: ANN204
        return iter(self.ids())

    def __len__(self) -> int:
        return len(self.ids())

    def __getitem__(self, i: int) -> int:
        return self.ids()[i]

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self._error else f"ids={self.ids()}")
        return f"Upload({state})"


class _Uploader:
    """One daemon thread draining a bounded queue of upload jobs, so a training loop rarely waits on the
    network: it blocks only when `max_pending` uploads are already waiting (back-pressure, bounded memory)."""

    def __init__(self, max_pending: int) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Upload] | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._loop, name="repscope-uploader", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Upload:
        handle = Upload()
        self._queue.put((job, handle))
        return handle

    def flush(self) -> None:
        self._queue.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                job, handle = item
                try:
                    handle._resolve(accepted=job())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the handle
                    log.warning("repscope upload failed: %s", exc)
                    handle._resolve(error=exc)
            finally:
                self._queue.task_done()


class RunHandle:
    """A training run as the client holds it (`Client.run`): log embeddings, checkpoints and scalars at training
    steps; wait; read metrics back.

    By default uploads go through a background thread (`background=True`): `log_*` return an `Upload` handle
    at once, after copying what they were given, so the caller may keep training and mutate its tensors.
    """

    def __init__(self, client: Client, info: RunRead, *, background: bool = True, max_pending: int = 8) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self.uploads: list[Upload] = []
        self._uploader = _Uploader(max_pending) if background else None

    def __repr__(self) -> str:
        return f"RunHandle(id={self.id}, project={self.info.project!r}, name={self.info.name!r})"

    def update(self, *, name: str | None = None, notes: str | None = None, tags: Iterable[str] | None = None,
               archived: bool | None = None) -> RunRead:
        """Rename, set notes, replace tags, archive or restore this run (see Client.update_run)."""
        self.info = self.client.update_run(self.id, name=name, notes=notes, tags=tags, archived=archived)
        return self.info

    @property
    def config(self) -> dict[str, Any]:
        return self.info.config

    def _submit(self, job: Callable[[], Any]) -> Upload:
        if self._uploader is None:
            handle = Upload()
            try:
                handle._resolve(accepted=job())
            except RepscopeError as exc:
                handle._resolve(error=exc)
                raise
            self.uploads.append(handle)
            return handle
        handle = self._uploader.submit(job)
        self.uploads.append(handle)
        return handle

    def log_embeddings(self, step: int, embeddings: Any, labels: Any = None, *, split: Any = None,
                       poison: Any = None, views: Any = None, dataset: str | None = None,
                       suites: Iterable[str] | None = None) -> Upload:
        """Upload N×D embeddings (numpy or torch) taken at `step`. Streamed as .npy (.npz with labels), with no
        temporary file; in background mode the arrays are copied first so training can go on."""
        arrays = {"embeddings": _as_numpy(embeddings)}
        for name, value in (("labels", labels), ("split", split), ("poison", poison), ("views", views)):
            if value is not None:
                arrays[name] = _as_numpy(value)
        if self._uploader is not None:
            arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
        suites = list(suites) if suites is not None else None
        key = uuid.uuid4().hex
        return self._submit(lambda: self.client.upload_arrays(self.id, arrays, step=step, dataset=dataset,
                                                              suites=suites, idempotency_key=key))

    def log_file(self, path: str | os.PathLike, step: int, *, kind: str = "embeddings", dataset: str | None = None,
                 suites: Iterable[str] | None = None, **fields: Any) -> Upload:
        """Upload a file as it is (embeddings file or checkpoint); extra fields: the upload form's (arch, pool, ...)."""
        suites = list(suites) if suites is not None else None
        extra = {k: str(v) for k, v in fields.items() if v is not None}
        key = uuid.uuid4().hex
        return self._submit(lambda: self.client.upload_file(self.id, path, step=step, kind=kind, dataset=dataset,
                                                            suites=suites, extra=extra, idempotency_key=key))

    def log_checkpoint(self, step: int, model_or_path: Any, *, arch: str | None = None,
                       arch_kwargs: dict[str, Any] | str | None = None, checkpoint_key: str | None = None,
                       mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
                       resize: int | None = None, crop: int | None = None, interpolation: str | None = None,
                       pool: str | None = None, output: str | None = None, views: int | None = None,
                       dataset: str | None = None, suites: Iterable[str] | None = None) -> Upload:
        """Upload an encoder; the server embeds `dataset` with it and runs the suites. `model_or_path`: a checkpoint
        file; a Hugging Face `save_pretrained` folder (zipped now); a transformers model (saved with
        safe_serialization, arch "hf"); a timm model (its state_dict, arch defaulting to its timm name); another
        nn.Module (its state_dict when `arch` is given, else TorchScript). Modules and folders are saved now, so
        training may go on. `arch`: a timm name, torchvision:<name>, hf, resnet18_cifar / resnet50_cifar;
        `arch_kwargs` (a dict, sent as JSON), `checkpoint_key`, `mean`/`std` (three floats), `resize`, `crop`,
        `interpolation`: see the upload form (repscope.checkpoint_upload, backend.api.checkpoint_fields)."""
        ckpt = checkpoint_file(model_or_path, arch)
        extra = checkpoint_fields(arch=ckpt.arch, arch_kwargs=arch_kwargs, checkpoint_key=checkpoint_key, mean=mean,
                                  std=std, resize=resize, crop=crop, interpolation=interpolation, pool=pool,
                                  output=output, views=views)
        suites = list(suites) if suites is not None else None
        key = uuid.uuid4().hex

        def job() -> UploadAccepted:
            try:
                return self.client.upload_file(self.id, ckpt.path, step=step, kind="checkpoint", dataset=dataset,
                                               suites=suites, extra=extra, idempotency_key=key)
            finally:
                ckpt.cleanup()

        return self._submit(job)

    def log_metrics(self, step: int, metrics: dict[str, float] | None = None, **values: float) -> None:
        """Scalars from training (loss, lr, ...), charted beside repscope's metrics. Sent in the background."""
        body = {"step": step, "metrics": {**(metrics or {}), **values}}
        self._submit(lambda: _check(self.client._send(lambda: self.client.http.post(
            f"/runs/{self.id}/metrics", json=body))))

    def flush(self) -> None:
        """Block until every upload logged so far has been sent (or has failed)."""
        if self._uploader is not None:
            self._uploader.flush()

    def wait(self, timeout: float = 600.0) -> list[EvaluationRead]:
        """Flush, then block until every evaluation queued by this handle has finished, including the
        suites a checkpoint's embedding step queues once its embeddings exist. Raises the first upload error."""
        self.flush()
        ids: list[int] = []
        for handle in self.uploads:
            accepted = handle.result()
            if isinstance(accepted, UploadAccepted):
                ids += [e.id for e in accepted.evaluations if e.id not in ids]
        deadline = time.monotonic() + timeout
        finished = self.client.wait(ids, timeout=timeout)
        derived: list[int] = []  # suites an embedding step queued (a cache hit queued them at upload: in `ids`)
        for e in finished:
            if e.suite == EMBED_STEP:
                variant = (self.client.evaluation(e.id).result or {}).get("variant", {})
                derived += [i for i in variant.get("queued_evaluations", []) if i not in ids]
        if derived:
            finished += self.client.wait(derived, timeout=max(1.0, deadline - time.monotonic()))
        return finished

    def metrics(self, key: str, dataset: str | None = None, source: str | None = None) -> list[tuple[int, float]]:
        """The metric over step: [(step, value), ...]; only `dataset`'s points when given. `source`: "computed"
        (repscope's evaluations) or "logged" (this job's log_metrics); default: computed for a metric repscope
        computes, else logged."""
        params = {"key": key, **({"dataset": dataset} if dataset else {}), **({"source": source} if source else {})}
        series = MetricSeries.model_validate(_check(self.client.http.get(f"/runs/{self.id}/metrics",
                                                                         params=params)).json())
        return [(p.step, p.value) for p in series.points]
