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
from repscope.suites import check_suites, default_suites

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
                        max_elements: int) -> Registered:
    """Validate and commit an embeddings upload. The temp file is always consumed (moved or removed).

    `suites` None means every suite the content allows (probes only when the file has labels)."""
    try:
        info = inspect_embeddings(received.path, filename, max_elements=max_elements)
        if suites is None:
            suites = default_suites(info.has_labels)
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
                            meta={**info.to_meta(), "filename": filename}, dataset=dataset)
        evaluations = [Evaluation(artifact=artifact, suite=suite, params={}, status=Status.queued.value)
                       for suite in suites]
        session.add(artifact)
        session.add_all(evaluations)
        session.commit()
    except BaseException:
        session.rollback()
        if created and not _key_referenced(session, key):
            store.delete(key)
        raise
    return Registered(artifact, evaluations, deduplicated=False)


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
