from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from backend.api.deps import QueueDep, SessionDep, SettingsDep, StoreDep
from backend.multipart import MultipartError, receive_upload
from backend.services import runs as run_service
from backend.services.artifacts import (
    ARTIFACT_KINDS,
    UploadRejected,
    artifact_read,
    evaluation_briefs,
    get_artifact,
    register_embeddings,
)
from backend.services.evaluations import now
from backend.storage import UploadTooLarge
from repscope.schemas import ArtifactRead, UploadAccepted
from repscope.suites import parse_suites

router = APIRouter(tags=["artifacts"])

UPLOAD_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "embeddings: .npy (N x D), .npz / .safetensors (embeddings, labels, "
                                        "split, poison) or .pt (weights-only torch.save)"},
                "kind": {"type": "string", "enum": list(ARTIFACT_KINDS), "default": "embeddings"},
                "step": {"type": "integer", "minimum": 0, "default": 0},
                "dataset": {"type": "string", "description": "dataset the embeddings were computed on"},
                "suites": {"type": "string", "description": "comma list of spectrum, probes; default: every "
                                                           "suite the file allows (probes needs labels)"},
            }}}},
    }
}


def _parse_fields(fields: dict[str, str]) -> tuple[str, int, str | None, list[str] | None]:
    kind = fields.get("kind", "embeddings").strip() or "embeddings"
    if kind not in ARTIFACT_KINDS:
        raise UploadRejected(f"kind must be one of {', '.join(ARTIFACT_KINDS)}; got {kind!r}")
    if kind == "checkpoint":
        raise UploadRejected("checkpoint uploads are not supported by this server yet; upload embeddings")
    try:
        step = int(fields.get("step", "0").strip() or 0)
    except ValueError:
        raise UploadRejected(f"step must be a non-negative integer; got {fields.get('step')!r}") from None
    if step < 0:
        raise UploadRejected(f"step must be a non-negative integer; got {step}")
    dataset = (fields.get("dataset") or "").strip() or None
    try:
        suites = parse_suites(fields.get("suites"))
    except ValueError as exc:
        raise UploadRejected(str(exc)) from None
    return kind, step, dataset, suites


@router.post("/runs/{run_id}/artifacts", status_code=202, response_model=UploadAccepted,
             openapi_extra=UPLOAD_FORM_SCHEMA)
async def upload_artifact(run_id: int, request: Request, session: SessionDep, store: StoreDep,
                          queue: QueueDep, settings: SettingsDep) -> UploadAccepted:
    """Stream an embeddings file into the store, validate it, and queue one evaluation per suite."""
    run = await run_in_threadpool(run_service.get_run, session, run_id)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"upload of {declared} bytes exceeds the size limit of {settings.max_upload_bytes} bytes")
    try:
        form = await receive_upload(request, store, settings.max_upload_bytes)
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from None
    if form.file is None:
        raise HTTPException(400, "missing the 'file' part of the multipart form")
    try:
        _, step, dataset, suites = _parse_fields(form.fields)
        registered = await run_in_threadpool(
            register_embeddings, session, store, run, form.file, filename=form.filename, step=step,
            dataset=dataset, suites=suites, max_elements=settings.max_elements)
    except UploadRejected as exc:
        form.file.path.unlink(missing_ok=True)
        raise HTTPException(exc.status_code, str(exc)) from None
    except BaseException:
        form.file.path.unlink(missing_ok=True)
        raise
    if not registered.deduplicated:
        await run_in_threadpool(_enqueue, session, queue, registered.evaluations)
    return UploadAccepted(artifact=artifact_read(registered.artifact),
                          evaluations=evaluation_briefs(registered.evaluations),
                          deduplicated=registered.deduplicated)


def _enqueue(session, queue, evaluations) -> None:  # noqa: ANN001
    for evaluation in evaluations:
        if queue.send_evaluation(evaluation.id):
            evaluation.enqueued_at = now()
    session.commit()


@router.get("/artifacts/{artifact_id}", response_model=ArtifactRead)
def read_artifact(artifact_id: int, session: SessionDep) -> ArtifactRead:
    return artifact_read(get_artifact(session, artifact_id))


@router.get("/artifacts/{artifact_id}/file", response_class=FileResponse)
def download_artifact(artifact_id: int, session: SessionDep, store: StoreDep) -> FileResponse:
    artifact = get_artifact(session, artifact_id)
    path = store.path(artifact.storage_key)
    if not path.is_file():
        raise HTTPException(410, f"artifact {artifact_id}'s file is missing from the store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"artifact-{artifact.id}-step{artifact.step}.{artifact.format}",
                        headers={"X-Content-SHA256": artifact.sha256})
