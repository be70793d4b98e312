"""Artifacts: validate a received upload, store it by content, and queue its evaluations atomically.

Order of operations (DESIGN.md, data flow 1): the body is already on disk in the store's temp area and
hashed; here it is validated, renamed into the content-addressed store, and the Artifact row plus one
Evaluation row per suite are committed together. Any failure removes what this request created.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation, Run
from backend.services import NotFound
from backend.storage import ArtifactStore, Received
from repscope.formats import FormatError, inspect_embeddings
from repscope.schemas import ArtifactRead, EvaluationBrief, Status
from repscope.suites import EMBED_STEP, check_suites, default_suites, split_checkpoint_suites

ARTIFACT_KINDS = ("embeddings", "checkpoint")


class UploadRejected(ValueError):
    """The upload is not acceptable (bad fields or bad file); becomes a 4xx with this message."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Registered:
    artifact: Artifact
    evaluations: list[Evaluation]
    deduplicated: bool


def register_embeddings(session: Session, store: ArtifactStore, run: Run, received: Received, *,
                        filename: str | None, step: int, dataset: str | None, suites: list[str] | None,
                        max_elements: int, parent: Artifact | None = None,
                        cache_key: str | None = None, idempotency_key: str | None = None) -> Registered:
    """Validate and commit an embeddings upload. The temp file is always consumed (moved or removed).

    `suites` None means every suite the content allows (probes only when the file has labels)."""
    try:
        info = inspect_embeddings(received.path, filename, max_elements=max_elements)
        if suites is None:
            suites = default_suites(info.has_labels, info.has_poison)
        check_suites(suites, info.has_labels)
    except (FormatError, ValueError) as exc:
        received.path.unlink(missing_ok=True)
        raise UploadRejected(str(exc)) from exc

    existing = session.scalar(select(Artifact).where(
        Artifact.run_id == run.id, Artifact.step == step, Artifact.kind == "embeddings",
        Artifact.sha256 == received.sha256))
    if existing is not None and store.exists(existing.storage_key):
        received.path.unlink(missing_ok=True)
        return Registered(existing, list(existing.evaluations), deduplicated=True)

    key, created = store.commit(received, info.format)
    try:
        artifact = Artifact(run_id=run.id, step=step, kind="embeddings", format=info.format,
                            sha256=received.sha256, bytes=received.size, storage_key=key,
                            meta={**info.to_meta(), "filename": filename}, dataset=dataset, parent=parent,
                            cache_key=cache_key, idempotency_key=idempotency_key)
        evaluations = [Evaluation(artifact=artifact, suite=suite, params={}, status=Status.queued.value)
                       for suite in suites]
        session.add(artifact)
        session.add_all(evaluations)
        session.commit()
    except BaseException:
        _undo(session, store, key, created)
        raise
    return Registered(artifact, evaluations, deduplicated=False)


def find_by_idempotency_key(session: Session, run_id: int, key: str | None) -> Registered | None:
    """The artifact an earlier request with this Idempotency-Key created, if any."""
    if not key:
        return None
    artifact = session.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.idempotency_key == key))
    if artifact is None:
        return None
    return Registered(artifact, list(artifact.evaluations), deduplicated=True)


def _undo(session: Session, store: ArtifactStore, key: str, created: bool) -> None:
    """A failed commit: roll back, and remove the stored file if this request put it there and no row uses it."""
    session.rollback()
    if created and not _key_referenced(session, key):
        store.delete(key)


def _key_referenced(session: Session, key: str) -> bool:
    return session.scalar(select(Artifact.id).where(Artifact.storage_key == key).limit(1)) is not None


def get_artifact(session: Session, artifact_id: int) -> Artifact:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} does not exist")
    return artifact


def artifact_read(artifact: Artifact) -> ArtifactRead:
    return ArtifactRead.model_validate(artifact)


def evaluation_briefs(evaluations: list[Evaluation]) -> list[EvaluationBrief]:
    return [EvaluationBrief(id=e.id, suite=e.suite, status=Status(e.status)) for e in evaluations]


def list_run_artifacts(session: Session, run_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.run_id == run_id)
                                .order_by(Artifact.step, Artifact.id)).all())


# --- checkpoints ---------------------------------------------------------------------------------------

EMBED_VERSION = "v1"  # bump when the worker's preprocessing changes: old cached embeddings stop matching


def embedding_cache_key(checkpoint_sha: str, dataset_identity: str, params: dict) -> str:
    """sha256 of (checkpoint bytes, dataset identity, preprocessing): the same checkpoint on the same dataset
    with the same preprocessing is embedded once."""
    import hashlib
    import json

    preprocessing = {k: params.get(k) for k in ("arch", "pool", "output", "views", "image_size")}
    blob = json.dumps({"checkpoint": checkpoint_sha, "dataset": dataset_identity, "preprocessing": preprocessing,
                       "version": EMBED_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def register_checkpoint(session: Session, store: ArtifactStore, run: Run, received: Received, *,
                        filename: str | None, step: int, dataset, params: dict,  # noqa: ANN001
                        suites: list[str] | None, idempotency_key: str | None = None) -> Registered:
    """Validate a checkpoint, store it, and queue its embedding on `dataset` (or reuse cached embeddings)."""
    from repscope.checkpoints import CheckpointError, inspect_checkpoint

    try:
        info = inspect_checkpoint(received.path, filename)
        if info.needs_arch and not params.get("arch"):
            raise UploadRejected(f"a {info.format} checkpoint holds weights only: name its architecture in the "
                                 "'arch' field (e.g. resnet18_cifar, vit_small, or a timm model name)")
        suites = suites if suites is not None else default_suites(bool(dataset.classes))
        on_encoder, on_embeddings = split_checkpoint_suites(suites)
    except CheckpointError as exc:
        received.path.unlink(missing_ok=True)
        raise UploadRejected(str(exc)) from exc
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    params = {**params, "dataset": dataset.name, "suites": on_embeddings}
    cache_key = embedding_cache_key(received.sha256, dataset.sha256 or dataset.name, params)
    existing = session.scalar(select(Artifact).where(
        Artifact.run_id == run.id, Artifact.step == step, Artifact.kind == "checkpoint",
        Artifact.sha256 == received.sha256, Artifact.dataset == dataset.name))
    if existing is not None and store.exists(existing.storage_key):
        received.path.unlink(missing_ok=True)
        return Registered(existing, list(existing.evaluations), deduplicated=True)

    key, created = store.commit(received, {"export": "pt2", "safetensors": "safetensors"}.get(info.format, "pt"))
    try:
        artifact = Artifact(run_id=run.id, step=step, kind="checkpoint", format=info.format,
                            sha256=received.sha256, bytes=received.size, storage_key=key, dataset=dataset.name,
                            meta={**info.to_meta(), "filename": filename, "arch": params.get("arch")},
                            idempotency_key=idempotency_key)
        encoder_params = {k: v for k, v in params.items() if k != "suites"}
        evaluations = [Evaluation(artifact=artifact, suite=s, params=encoder_params, status=Status.queued.value)
                       for s in on_encoder]
        session.add(artifact)
        session.add_all(evaluations)
        embed = None
        if on_embeddings:
            embed = Evaluation(artifact=artifact, suite=EMBED_STEP, params={**params, "cache_key": cache_key},
                               status=Status.queued.value)
            session.add(embed)
            evaluations.insert(0, embed)
        cached = session.scalar(select(Artifact).where(Artifact.cache_key == cache_key).limit(1))
        if embed is not None and cached is not None and store.exists(cached.storage_key):
            derived = Artifact(run_id=run.id, step=step, kind="embeddings", format=cached.format,
                               sha256=cached.sha256, bytes=cached.bytes, storage_key=cached.storage_key,
                               meta=cached.meta, dataset=dataset.name, parent=artifact, cache_key=cache_key)
            session.add(derived)
            suite_evaluations = [Evaluation(artifact=derived, suite=s, params={}, status=Status.queued.value)
                                 for s in on_embeddings]
            session.add_all(suite_evaluations)
            evaluations += suite_evaluations
            embed.status = Status.succeeded.value
            embed.progress = 1.0
            embed.message = "embeddings reused from the cache"
            embed.result = {"figures": {}, "variant": {"cached_from_artifact": cached.id}, "warnings": [],
                            "undefined_metrics": []}
        session.commit()
    except BaseException:
        _undo(session, store, key, created)
        raise
    return Registered(artifact, evaluations, deduplicated=False)
