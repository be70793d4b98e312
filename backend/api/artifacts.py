from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from backend.api.deps import CanRead, CanUpload, QueueDep, SessionDep, SettingsDep, StoreDep
from backend.api.params import SqlInt
from backend.multipart import receive_file_or_4xx
from backend.services import runs as run_service
from backend.services.artifacts import (
    ARTIFACT_KINDS,
    UploadRejected,
    artifact_read,
    evaluation_briefs,
    find_by_idempotency_key,
    get_artifact,
    register_checkpoint,
    register_embeddings,
)
from backend.services.datasets import get_dataset
from backend.services.evaluations import now
from repscope.schemas import ArtifactRead, UploadAccepted
from repscope.suites import parse_suites

router = APIRouter(tags=["artifacts"], dependencies=[CanRead])
DEFAULT_CHECKPOINT_DATASET = "digits"

UPLOAD_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "embeddings: .npy (N x D), .npz / .safetensors (embeddings, labels, "
                                        "split, poison) or .pt (weights-only torch.save); checkpoint: "
                                        "TorchScript, torch.export .pt2, state_dict .pt/.pth or .safetensors"},
                "kind": {"type": "string", "enum": list(ARTIFACT_KINDS), "default": "embeddings"},
                "step": {"type": "integer", "minimum": 0, "default": 0},
                "dataset": {"type": "string", "description": "embeddings: the dataset they were computed on; "
                                                             "checkpoint: the dataset to embed (default digits)"},
                "arch": {"type": "string", "description": "checkpoint state_dicts: architecture name"},
                "pool": {"type": "string", "enum": ["cls", "mean"], "description": "ViTs: CLS token or mean"},
                "output": {"type": "string", "enum": ["backbone", "projector"]},
                "views": {"type": "integer", "minimum": 0, "maximum": 16,
                          "description": "augmented views per image (enables LiDAR)"},
                "suites": {"type": "string", "description": "comma list of spectrum, probes; default: every "
                                                           "suite the file allows (probes needs labels)"},
            }}}},
    }
}


POOLS = ("cls", "mean")
OUTPUTS = ("backbone", "projector")
MAX_VIEWS = 16


@dataclass
class UploadFields:
    kind: str
    step: int
    dataset: str | None
    suites: list[str] | None
    checkpoint_params: dict
    parent_id: int | None
    cache_key: str | None


def _int_field(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = (fields.get(name) or "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise UploadRejected(f"{name} must be an integer; got {raw!r}") from None
    if not lo <= value <= hi:
        raise UploadRejected(f"{name} must be between {lo} and {hi}; got {value}")
    return value


def _choice(fields: dict[str, str], name: str, options: tuple[str, ...]) -> str:
    value = (fields.get(name) or options[0]).strip()
    if value not in options:
        raise UploadRejected(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def _parse_fields(fields: dict[str, str]) -> UploadFields:
    kind = _choice(fields, "kind", ARTIFACT_KINDS)
    step = _int_field(fields, "step", 0, 0, 2**62)
    dataset = (fields.get("dataset") or "").strip() or None
    try:
        suites = parse_suites(fields.get("suites"))
    except ValueError as exc:
        raise UploadRejected(str(exc)) from None
    params = {}
    if kind == "checkpoint":
        arch = (fields.get("arch") or "").strip() or None
        if arch is not None and not re.fullmatch(r"[A-Za-z0-9_.\-/]{1,100}", arch):
            raise UploadRejected(f"arch {arch!r} is not a valid architecture name")
        params = {"arch": arch, "pool": _choice(fields, "pool", POOLS), "output": _choice(fields, "output", OUTPUTS),
                  "views": _int_field(fields, "views", 0, 0, MAX_VIEWS)}
    parent = _int_field(fields, "parent", 0, 0, 2**62) or None
    cache_key = (fields.get("cache_key") or "").strip() or None
    if cache_key is not None and not re.fullmatch(r"[0-9a-f]{64}", cache_key):
        raise UploadRejected("cache_key must be 64 hex digits")
    return UploadFields(kind, step, dataset, suites, params, parent, cache_key)


def _register(session, store, run, form, fields: UploadFields, settings, idempotency_key):  # noqa: ANN001, ANN202
    """Runs in a worker thread: validation and hashing-bound work stay off the event loop."""
    if fields.kind == "checkpoint":
        dataset = get_dataset(session, fields.dataset or DEFAULT_CHECKPOINT_DATASET)
        return register_checkpoint(session, store, run, form.file, filename=form.filename, step=fields.step,
                                   dataset=dataset, params=fields.checkpoint_params, suites=fields.suites,
                                   idempotency_key=idempotency_key)
    parent = None
    if fields.parent_id is not None:
        parent = get_artifact(session, fields.parent_id)
        if parent.run_id != run.id or parent.kind != "checkpoint":
            raise UploadRejected(f"parent {fields.parent_id} is not a checkpoint of run {run.id}")
    return register_embeddings(session, store, run, form.file, filename=form.filename, step=fields.step,
                               dataset=fields.dataset, suites=fields.suites, max_elements=settings.max_elements,
                               parent=parent, cache_key=fields.cache_key, idempotency_key=idempotency_key)


@router.post("/runs/{run_id}/artifacts", status_code=202, dependencies=[CanUpload], response_model=UploadAccepted,
             openapi_extra=UPLOAD_FORM_SCHEMA)
async def upload_artifact(run_id: SqlInt, request: Request, session: SessionDep, store: StoreDep,
                          queue: QueueDep, settings: SettingsDep) -> UploadAccepted:
    """Stream an embeddings file or a checkpoint into the store, validate it, and queue its evaluations."""
    run = await run_in_threadpool(run_service.get_run, session, run_id)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not re.fullmatch(r"[A-Za-z0-9_.:\-]{8,100}", idempotency_key):
        raise HTTPException(400, "Idempotency-Key must be 8-100 letters, digits, '_', '.', ':' or '-'")
    earlier = await run_in_threadpool(find_by_idempotency_key, session, run.id, idempotency_key)
    if earlier is not None:  # a retry of a request that already succeeded: same answer, body ignored
        return _accepted(earlier)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"upload of {declared} bytes exceeds the size limit of {settings.max_upload_bytes} bytes")
    form = await receive_file_or_4xx(request, store, settings.max_upload_bytes)
    try:
        fields = _parse_fields(form.fields)
        registered = await run_in_threadpool(_register, session, store, run, form, fields, settings,
                                             idempotency_key)
    except UploadRejected as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the race
        session.rollback()
        earlier = await run_in_threadpool(find_by_idempotency_key, session, run.id, idempotency_key)
        if earlier is None:
            raise
        return _accepted(earlier)
    finally:
        form.file.path.unlink(missing_ok=True)  # consumed already unless validation failed early
    if not registered.deduplicated:
        queued = [e for e in registered.evaluations if e.status == "queued"]
        await run_in_threadpool(_enqueue, session, queue, queued)
    return _accepted(registered)


def _accepted(registered) -> UploadAccepted:  # noqa: ANN001
    return UploadAccepted(artifact=artifact_read(registered.artifact),
                          evaluations=evaluation_briefs(registered.evaluations),
                          deduplicated=registered.deduplicated)


def _enqueue(session, queue, evaluations) -> None:  # noqa: ANN001
    for evaluation in evaluations:
        if queue.send_evaluation(evaluation):
            evaluation.enqueued_at = now()
    session.commit()


@router.get("/artifacts/{artifact_id}", response_model=ArtifactRead)
def read_artifact(artifact_id: SqlInt, session: SessionDep) -> ArtifactRead:
    return artifact_read(get_artifact(session, artifact_id))


@router.get("/artifacts/{artifact_id}/file", response_class=FileResponse)
def download_artifact(artifact_id: SqlInt, session: SessionDep, store: StoreDep) -> FileResponse:
    artifact = get_artifact(session, artifact_id)
    path = store.path(artifact.storage_key)
    if not path.is_file():
        raise HTTPException(410, f"artifact {artifact_id}'s file is missing from the store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"artifact-{artifact.id}-step{artifact.step}.{artifact.format}",
                        headers={"X-Content-SHA256": artifact.sha256})
