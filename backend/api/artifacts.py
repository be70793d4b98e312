from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from backend.api.checkpoint_fields import FORM_PROPERTIES as CHECKPOINT_FORM_PROPERTIES
from backend.api.checkpoint_fields import parse_checkpoint_fields
from backend.api.deps import CanRead, CanUpload, QueueDep, SessionDep, SettingsDep, StoreDep
from backend.api.openapi import FILE_RESPONSE
from backend.api.params import SQL_INT_MAX, SqlInt
from backend.multipart import receive_file_or_4xx
from backend.security import Principal, authenticate
from backend.services import NotFound
from backend.services import runs as run_service
from backend.services.artifacts import (
    ARTIFACT_KINDS,
    Idempotency,
    UploadRejected,
    artifact_read,
    check_key_owner,
    check_replay,
    derived_target,
    evaluation_briefs,
    find_by_idempotency_key,
    get_artifact,
    register_checkpoint,
    register_embeddings,
    request_fingerprint,
)
from backend.services.datasets import get_dataset
from backend.services.evaluations import now
from repscope.formats import ZipLimits
from repscope.schemas import MAX_STEP, ArtifactRead, UploadAccepted
from repscope.suites import parse_suites

router = APIRouter(tags=["artifacts"], dependencies=[CanRead])
DEFAULT_CHECKPOINT_DATASET = "digits"

IDEMPOTENCY_KEY = r"[A-Za-z0-9_.:\-]{8,100}"
UPLOAD_FORM_SCHEMA = {
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY}$"},
                    "description": "retry-safe uploads: a retry with the same key and the same request gets the "
                                   "first answer; keys are global: the key with another request, on another run "
                                   "or from another token is a 409"}],
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "embeddings: .npy (N x D), .npz / .safetensors (embeddings, labels, "
                                        "split, poison) or .pt (weights-only torch.save); checkpoint: "
                                        "TorchScript, torch.export .pt2, state_dict .pt/.pth, .safetensors or "
                                        "a Hugging Face model zip (config.json + *.safetensors)"},
                "kind": {"type": "string", "enum": list(ARTIFACT_KINDS), "default": "embeddings"},
                "step": {"type": "integer", "minimum": 0, "maximum": MAX_STEP, "default": 0},
                "dataset": {"type": "string", "description": "embeddings: the dataset they were computed on; "
                                                             "checkpoint: the dataset to embed (default digits)"},
                **CHECKPOINT_FORM_PROPERTIES,
                "suites": {"type": "string", "description": "comma list of spectrum, probes; default: every "
                                                           "suite the file allows (probes needs labels)"},
                "evaluation": {"type": "integer", "minimum": 1,
                               "description": "workers only: the embed evaluation whose embeddings these are; "
                                              "the server then sets step, dataset, suites, parent and cache key"},
                "claim": {"type": "string", "description": "workers only: that evaluation's claim id"},
            }}}},
    }
}


@dataclass
class UploadFields:
    kind: str
    step: int
    dataset: str | None
    suites: list[str] | None
    checkpoint_params: dict
    evaluation_id: int | None  # a derived-embeddings upload: the embed evaluation it belongs to ...
    claim: str | None  # ... and that evaluation's claim id


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


SERVER_ONLY_FIELDS = ("cache_key", "parent")


def _parse_fields(fields: dict[str, str]) -> UploadFields:
    refused = [name for name in SERVER_ONLY_FIELDS if name in fields]
    if refused:
        raise UploadRejected(f"field(s) {', '.join(refused)} are set by the server only; a worker attaching an "
                             "embed step's embeddings sends 'evaluation' and 'claim' instead")
    kind = _choice(fields, "kind", ARTIFACT_KINDS)
    step = _int_field(fields, "step", 0, 0, MAX_STEP)
    dataset = (fields.get("dataset") or "").strip() or None
    try:
        suites = parse_suites(fields.get("suites"))
    except ValueError as exc:
        raise UploadRejected(str(exc)) from None
    params = parse_checkpoint_fields(fields) if kind == "checkpoint" else {}
    evaluation_id = _int_field(fields, "evaluation", 0, 0, SQL_INT_MAX) or None
    claim = (fields.get("claim") or "").strip() or None
    if (evaluation_id is None) != (claim is None):
        raise UploadRejected("a derived-embeddings upload needs both 'evaluation' (the embed evaluation's id) "
                             "and 'claim' (its claim id)")
    if evaluation_id is not None and kind != "embeddings":
        raise UploadRejected("'evaluation' and 'claim' name an embed step: the upload must be kind=embeddings")
    return UploadFields(kind, step, dataset, suites, params, evaluation_id, claim)


def _check_matches(fields: dict[str, str], parsed: UploadFields, step: int, dataset: str,
                   suites: list[str]) -> None:
    """A derived upload may repeat what the server sets, but never contradict it."""
    wrong = [name for name, sent, actual in (("step", parsed.step if "step" in fields else None, step),
                                             ("dataset", parsed.dataset, dataset),
                                             ("suites", parsed.suites, suites))
             if sent is not None and sent != actual]
    if wrong:
        raise UploadRejected(f"field(s) {', '.join(wrong)} differ from the embed evaluation's; the server sets "
                             "them (omit them)")


def _check_scope(principal: Principal, fields: UploadFields) -> None:
    """CanUpload lets write and worker tokens in; which upload each may make is decided here, from the form.
    A worker token only attaches an embed step's embeddings under its claim: were it to upload checkpoints or plain
    embeddings, it could claim its own embed step of a victim's checkpoint bytes and plant the cache entry."""
    if fields.evaluation_id is not None:
        if not principal.has("worker"):
            raise HTTPException(403, f"token {principal.name!r} lacks the worker scope: only the worker holding "
                                     "an embed step's claim attaches its embeddings")
    elif not principal.has("write"):
        raise HTTPException(403, f"token {principal.name!r} lacks the write scope: a worker token uploads only an "
                                 "embed step's embeddings (with its 'evaluation' and 'claim')")


def _register(session, store, run, form, fields: UploadFields, settings, idempotency):  # noqa: ANN001, ANN202
    """Runs in a worker thread: validation and hashing-bound work stay off the event loop."""
    if fields.kind == "checkpoint":
        dataset = get_dataset(session, fields.dataset or DEFAULT_CHECKPOINT_DATASET)
        return register_checkpoint(session, store, run, form.file, filename=form.filename, step=fields.step,
                                   dataset=dataset, params=fields.checkpoint_params, suites=fields.suites,
                                   idempotency=idempotency)
    if fields.evaluation_id is not None:
        target = derived_target(session, run, fields.evaluation_id, fields.claim or "")
        _check_matches(form.fields, fields, target.step, target.dataset, target.suites)
        return register_embeddings(session, store, run, form.file, filename=form.filename, step=target.step,
                                   dataset=target.dataset, suites=target.suites,
                                   max_elements=settings.max_elements, parent=target.parent,
                                   cache_key=target.cache_key, idempotency=idempotency)
    return register_embeddings(session, store, run, form.file, filename=form.filename, step=fields.step,
                               dataset=fields.dataset, suites=fields.suites, max_elements=settings.max_elements,
                               zip_limits=ZipLimits.from_settings(settings),
                               idempotency=idempotency)


@router.post("/runs/{run_id}/artifacts", status_code=202, dependencies=[CanUpload], response_model=UploadAccepted,
             openapi_extra=UPLOAD_FORM_SCHEMA,
             responses={409: {"description": "The Idempotency-Key was used with another request, on another run or "
                                             "by another token, or the embed step's claim is not the current one"}})
async def upload_artifact(run_id: SqlInt, request: Request, session: SessionDep, store: StoreDep,
                          queue: QueueDep, settings: SettingsDep) -> UploadAccepted:
    """Stream an embeddings file or a checkpoint into the store, validate it, and queue its evaluations."""
    principal = authenticate(request, session)  # computed by the CanUpload check already
    run = await run_in_threadpool(run_service.get_run, session, run_id)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not re.fullmatch(IDEMPOTENCY_KEY, idempotency_key):
        raise HTTPException(400, "Idempotency-Key must be 8-100 letters, digits, '_', '.', ':' or '-'")
    earlier = await run_in_threadpool(find_by_idempotency_key, session, idempotency_key)
    if earlier is not None:  # another token's key, or another run's, is refused before the body is read
        check_key_owner(earlier.artifact, idempotency_key, principal.token_id, run.id)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"upload of {declared} bytes exceeds the size limit of {settings.max_upload_bytes} bytes")
    form = await receive_file_or_4xx(request, store, settings.max_upload_bytes)
    try:
        fields = _parse_fields(form.fields)
        _check_scope(principal, fields)
        idempotency = None if idempotency_key is None else Idempotency(
            idempotency_key, principal.token_id, run.id,
            request_fingerprint(form.file.sha256, form.filename, form.fields))
        if earlier is not None:  # a retry of a request that already succeeded: the same answer
            check_replay(earlier.artifact, idempotency)
            return _accepted(earlier)
        registered = await run_in_threadpool(_register, session, store, run, form, fields, settings, idempotency)
    except UploadRejected as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    except NotFound as exc:  # a dataset, parent or evaluation the form names: the run (the path) exists
        raise HTTPException(422, str(exc)) from None
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


@router.get("/artifacts/{artifact_id}/file", response_class=FileResponse,
            responses={**FILE_RESPONSE, 410: {"description": "The artifact's file is missing from the store"}})
def download_artifact(artifact_id: SqlInt, session: SessionDep, store: StoreDep) -> FileResponse:
    artifact = get_artifact(session, artifact_id)
    path = store.path(artifact.storage_key)
    if not path.is_file():
        raise HTTPException(410, f"artifact {artifact_id}'s file is missing from the store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"artifact-{artifact.id}-step{artifact.step}.{artifact.format}",
                        headers={"X-Content-SHA256": artifact.sha256})
