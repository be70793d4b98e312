"""Python client for the repscope REST API: training jobs log embeddings, workers report results.

Needs only numpy and httpx. Uploads are streamed from a temporary .npz file, so the request body is never
held in memory twice.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from repscope.schemas import (
    FINISHED,
    ClaimResponse,
    EvaluationPatch,
    EvaluationRead,
    EvaluationResultIn,
    MetricSeries,
    RunRead,
    Status,
    UploadAccepted,
)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0, write=300.0)


class RepscopeError(RuntimeError):
    """The server refused a request; `status_code` and `detail` say why."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class EvaluationFailed(RepscopeError):
    pass


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise RepscopeError(response.status_code, str(detail))


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
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> None:
        self.url = (url or os.environ.get("REPSCOPE_URL") or "http://127.0.0.1:8000").rstrip("/")
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

    def run(self, project: str, name: str, config: dict[str, Any] | None = None,
            tags: Iterable[str] = ()) -> Run:
        """Get or create the run (project, name)."""
        body = {"project": project, "name": name, "config": config or {}, "tags": list(tags)}
        return Run(self, RunRead.model_validate(_check(self.http.post("/runs", json=body)).json()))

    def evaluation(self, evaluation_id: int) -> EvaluationRead:
        return EvaluationRead.model_validate(_check(self.http.get(f"/evaluations/{evaluation_id}")).json())

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
             limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params = {k: v for k, v in {"project": project, "tag": tag, "q": q, "limit": limit, "offset": offset}.items()
                  if v is not None}
        return _check(self.http.get("/runs", params=params)).json()

    def upload_file(self, run_id: int, path: str | os.PathLike, *, step: int = 0, kind: str = "embeddings",
                    dataset: str | None = None, suites: Iterable[str] | None = None,
                    progress: Callable[[int], None] | None = None,
                    extra: dict[str, str] | None = None) -> UploadAccepted:
        """Stream a file as multipart/form-data; `progress(bytes_sent)` is called as the body goes out.
        `extra`: more form fields (checkpoints: arch, pool, output, views; workers: parent, cache_key)."""
        path = Path(path)
        data = {"kind": kind, "step": str(step), **(extra or {})}
        if dataset:
            data["dataset"] = dataset
        if suites is not None:
            data["suites"] = ",".join(suites)
        with path.open("rb") as fh:
            body = _ProgressReader(fh, progress) if progress else fh
            response = self.http.post(f"/runs/{run_id}/artifacts", data=data,
                                      files={"file": (path.name, body, "application/octet-stream")})
        return UploadAccepted.model_validate(_check(response).json())

    def dataset(self, name: str) -> dict[str, Any]:
        return _check(self.http.get(f"/datasets/{name}")).json()

    def datasets(self) -> list[dict[str, Any]]:
        return _check(self.http.get("/datasets")).json()

    # worker side ------------------------------------------------------------------------------
    def claim(self, evaluation_id: int, worker: str) -> ClaimResponse | None:
        """Take an evaluation; None when another delivery already has it (409)."""
        response = self.http.post(f"/evaluations/{evaluation_id}/claim", json={"worker": worker})
        if response.status_code == 409:
            return None
        return ClaimResponse.model_validate(_check(response).json())

    def report(self, evaluation_id: int, **fields: Any) -> None:
        body = EvaluationPatch(**fields).model_dump(exclude_none=True, mode="json")
        _check(self.http.patch(f"/evaluations/{evaluation_id}", json=body))

    def post_result(self, evaluation_id: int, result: EvaluationResultIn) -> EvaluationRead:
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


class Run:
    """A training run: log embeddings at training steps, wait for their evaluations, read metrics."""

    def __init__(self, client: Client, info: RunRead) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self.evaluation_ids: list[int] = []

    def __repr__(self) -> str:
        return f"Run(id={self.id}, project={self.info.project!r}, name={self.info.name!r})"

    def log_embeddings(self, step: int, embeddings: Any, labels: Any = None, *, split: Any = None,
                       poison: Any = None, dataset: str | None = None,
                       suites: Iterable[str] | None = None) -> list[int]:
        """Upload N×D embeddings (numpy or torch) taken at `step`; returns the queued evaluation ids at once."""
        arrays = {"embeddings": _as_numpy(embeddings)}
        for name, value in (("labels", labels), ("split", split), ("poison", poison)):
            if value is not None:
                arrays[name] = _as_numpy(value)
        with tempfile.TemporaryDirectory(prefix="repscope-") as tmp:
            path = Path(tmp) / f"step{step}.npz"
            np.savez(path, **arrays)
            accepted = self.client.upload_file(self.id, path, step=step, dataset=dataset, suites=suites)
        ids = [e.id for e in accepted.evaluations]
        self.evaluation_ids.extend(i for i in ids if i not in self.evaluation_ids)
        return ids

    def log_file(self, path: str | os.PathLike, step: int, *, dataset: str | None = None,
                 suites: Iterable[str] | None = None) -> list[int]:
        accepted = self.client.upload_file(self.id, path, step=step, dataset=dataset, suites=suites)
        ids = [e.id for e in accepted.evaluations]
        self.evaluation_ids.extend(i for i in ids if i not in self.evaluation_ids)
        return ids

    def wait(self, timeout: float = 600.0) -> list[EvaluationRead]:
        """Block until every evaluation this Run object queued has finished."""
        return self.client.wait(list(self.evaluation_ids), timeout=timeout)

    def metrics(self, key: str) -> list[tuple[int, float]]:
        """The metric over step: [(step, value), ...]."""
        series = MetricSeries.model_validate(_check(self.client.http.get(f"/runs/{self.id}/metrics",
                                                                         params={"key": key})).json())
        return [(p.step, p.value) for p in series.points]
