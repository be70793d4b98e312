"""Artifacts: validate a received upload, store it by content, and queue its evaluations atomically.

Order of operations (DESIGN.md, data flow 1): the body is already on disk in the store's temp area and
hashed; here it is validated, renamed into the content-addressed store, and the Artifact row plus one
Evaluation row per suite are committed together. Any failure removes what this request created.

Identical uploads (same run, kind, step, bytes, dataset, checkpoint params and parent) share one dedupe key,
unique per run in the database: of two concurrent ones, the loser's insert fails and it answers with the
winner's artifact. An Idempotency-Key is unique across the whole database: it names one request of one token on
one run, and any other use of it (another run, token or body) is a Conflict.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload

from backend.models import Artifact, Dataset, Evaluation, Run
from backend.services import Conflict, NotFound
from backend.services.evaluations import check_claim, get_evaluation
from backend.storage import ArtifactStore, Received
from repscope.cache import embedding_cache_key
from repscope.formats import FormatError, ZipLimits, inspect_embeddings
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


@dataclass(frozen=True)
class Idempotency:
    """An upload's Idempotency-Key, the token that sent it, the run it targets and the request's fingerprint: a
    replay of the key must match all three to get the first answer."""

    key: str
    token_id: int | None
    run_id: int
    fingerprint: str


def request_fingerprint(sha256: str, filename: str | None, fields: dict[str, str]) -> str:
    """sha256 of what makes two upload requests the same: file bytes, file name and form fields."""
    blob = json.dumps({"sha256": sha256, "filename": filename,
                       "fields": sorted((k, v) for k, v in fields.items() if k != "csrf_token")})
    return hashlib.sha256(blob.encode()).hexdigest()


def dedupe_key(kind: str, step: int, sha256: str, dataset: str | None, params: dict | None = None,
               parent_id: int | None = None) -> str:
    """Identity of an upload within its run; the unique (run, dedupe key) constraint stores it once."""
    blob = json.dumps({"kind": kind, "step": step, "sha256": sha256, "dataset": dataset, "params": params or {},
                       "parent": parent_id}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _idempotency_columns(idempotency: Idempotency | None) -> dict[str, Any]:
    if idempotency is None:
        return {}
    return {"idempotency_key": idempotency.key, "idempotency_token_id": idempotency.token_id,
            "idempotency_fingerprint": idempotency.fingerprint}


def check_key_owner(artifact: Artifact, key: str, token_id: int | None, run_id: int) -> None:
    """Another token's Idempotency-Key, or this token's key of another run, is a Conflict (checked before the body
    is read): keys are global, so a key reused for another run is a new request, not a retry."""
    if token_id is None or artifact.idempotency_token_id != token_id:
        raise Conflict(f"Idempotency-Key {key!r} was already used on run {artifact.run_id} by another token; "
                       "choose a new key")
    if artifact.run_id != run_id:
        raise Conflict(f"Idempotency-Key {key!r} was already used on run {artifact.run_id}, not run {run_id}; "
                       "use a new key for a new upload")


def check_replay(artifact: Artifact, idempotency: Idempotency) -> None:
    """A replay must come from the same token, on the same run, with the same request; anything else is a Conflict."""
    check_key_owner(artifact, idempotency.key, idempotency.token_id, idempotency.run_id)
    if not artifact.idempotency_fingerprint or not hmac.compare_digest(artifact.idempotency_fingerprint,
                                                                        idempotency.fingerprint):
        raise Conflict(f"Idempotency-Key {idempotency.key!r} was already used with a different request (the file's "
                       "sha256, its name or the form fields differ); use a new key for a new upload")


def _by_dedupe_key(session: Session, run_id: int, key: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.dedupe_key == key))


def _reuse(store: ArtifactStore, existing: Artifact, received: Received, ext: str) -> Registered:
    """Answer with an identical earlier upload; its stored file is restored from this one if it went missing."""
    if store.exists(existing.storage_key):
        received.path.unlink(missing_ok=True)
    else:
        store.commit(received, ext)
    return Registered(existing, list(existing.evaluations), deduplicated=True)


def _lost_race(session: Session, store: ArtifactStore, key: str, created: bool, exc: IntegrityError, run: Run,
               dedupe: str, idempotency: Idempotency | None) -> Registered:
    """A unique-constraint failure on commit: undo this request, then answer with the concurrent request that won
    (same Idempotency-Key, or the same upload); re-raise `exc` when neither explains the failure. `run` is read
    only after the rollback (its attributes cannot load from the failed transaction)."""
    _undo(session, store, key, created)
    if idempotency is not None:
        earlier = find_by_idempotency_key(session, idempotency.key)
        if earlier is not None:
            check_replay(earlier.artifact, idempotency)
            return earlier
    winner = _by_dedupe_key(session, run.id, dedupe)
    if winner is None:
        raise exc
    return Registered(winner, list(winner.evaluations), deduplicated=True)


def register_embeddings(session: Session, store: ArtifactStore, run: Run, received: Received, *,
                        filename: str | None, step: int, dataset: str | None, suites: list[str] | None,
                        max_elements: int, parent: Artifact | None = None, cache_key: str | None = None,
                        idempotency: Idempotency | None = None, zip_limits: ZipLimits | None = None) -> Registered:
    """Validate and commit an embeddings upload. The temp file is always consumed (moved or removed).

    `suites` None means every suite the content allows (probes only when the file has labels). `parent` and
    `cache_key` come from the server (derived_target), never from the client."""
    try:
        info = inspect_embeddings(received.path, filename, max_elements=max_elements, zip_limits=zip_limits)
        if suites is None:
            suites = default_suites(info.has_labels, info.has_poison)
        check_suites(suites, info.has_labels)
    except (FormatError, ValueError) as exc:
        received.path.unlink(missing_ok=True)
        raise UploadRejected(str(exc)) from exc

    dedupe = dedupe_key("embeddings", step, received.sha256, dataset, parent_id=parent.id if parent else None)
    existing = _by_dedupe_key(session, run.id, dedupe)
    if existing is not None:
        return _reuse(store, existing, received, info.format)

    key, created = store.commit(received, info.format)
    try:
        artifact = Artifact(run_id=run.id, step=step, kind="embeddings", format=info.format,
                            sha256=received.sha256, bytes=received.size, storage_key=key,
                            meta={**info.to_meta(), "filename": filename}, dataset=dataset, parent=parent,
                            cache_key=cache_key, dedupe_key=dedupe, **_idempotency_columns(idempotency))
        evaluations = [Evaluation(artifact=artifact, suite=suite, params={}, status=Status.queued.value)
                       for suite in suites]
        session.add(artifact)
        session.add_all(evaluations)
        session.commit()
    except IntegrityError as exc:
        return _lost_race(session, store, key, created, exc, run, dedupe, idempotency)
    except BaseException:
        _undo(session, store, key, created)
        raise
    return Registered(artifact, evaluations, deduplicated=False)


def find_by_idempotency_key(session: Session, key: str | None) -> Registered | None:
    """The artifact an earlier request with this Idempotency-Key created, on any run (the key is unique)."""
    if not key:
        return None
    artifact = session.scalar(select(Artifact).where(Artifact.idempotency_key == key))
    if artifact is None:
        return None
    return Registered(artifact, list(artifact.evaluations), deduplicated=True)


# --- derived embeddings: only an embed step's claim holder attaches them ------------------------------------


@dataclass
class DerivedTarget:
    """What the server sets on a derived-embeddings upload, from the embed evaluation it names."""

    parent: Artifact
    step: int
    dataset: str
    suites: list[str]
    cache_key: str | None


def derived_target(session: Session, run: Run, evaluation_id: int, claim_id: str) -> DerivedTarget:
    """The checkpoint, step, dataset, suites and cache key of the embed evaluation `evaluation_id`, provided the
    caller holds its current claim (Conflict otherwise): a client never chooses them."""
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.suite != EMBED_STEP:
        raise UploadRejected(f"evaluation {evaluation_id} is a {evaluation.suite!r} evaluation, not an embed step: "
                             "only an embed step's embeddings can be attached to a checkpoint")
    check_claim(evaluation, claim_id)
    checkpoint = evaluation.artifact
    if checkpoint.run_id != run.id:
        raise UploadRejected(f"evaluation {evaluation_id} belongs to run {checkpoint.run_id}, not run {run.id}")
    params = evaluation.params or {}
    return DerivedTarget(checkpoint, checkpoint.step, params["dataset"], list(params.get("suites") or []),
                         params.get("cache_key"))


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


def list_run_artifacts(session: Session, run_id: int, *, with_evaluations: bool = False) -> list[Artifact]:
    """A run's artifacts by step; `with_evaluations` loads each one's evaluations too (one more query, not N)."""
    stmt = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.step, Artifact.id)
    if with_evaluations:
        stmt = stmt.options(selectinload(Artifact.evaluations))
    return list(session.scalars(stmt).all())


# --- checkpoints ---------------------------------------------------------------------------------------

def dataset_content_hash(dataset: Dataset) -> str | None:
    """What pins a dataset's images: an upload's sha256, a built-in's generator version, a server folder's
    manifest hash now (repscope.dataset_manifest: every file's path, size and mtime; UploadRejected when the
    folder cannot be listed)."""
    if dataset.kind == "path":
        from repscope.dataset_manifest import ManifestError, folder_manifest

        meta = dataset.meta or {}
        try:
            key = folder_manifest(meta.get("path", "")).key
            selection = {k: meta[k] for k in ("subset", "per_class") if meta.get(k) is not None}
            return key + (":" + hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:16]
                          if selection else "")
        except ManifestError as exc:
            raise UploadRejected(f"dataset {dataset.name!r}: {exc}") from None
    return dataset.sha256 or None


def find_cached_embeddings(session: Session, store: ArtifactStore, cache_key: str,
                           checkpoint_sha: str) -> Artifact | None:
    """Derived embeddings stored under `cache_key` whose parent checkpoint has exactly these bytes.

    A hit may come from another run and another token's upload: that is legitimate reuse, because only the server
    sets `cache_key` (derived_target) and only a worker holding the embed step's claim uploads under it, and a
    worker token uploads nothing else (api.artifacts._check_scope). So every row found here is the output of a
    real, sandboxed embed step of a checkpoint with this sha256, on this dataset content and preprocessing."""
    checkpoint = aliased(Artifact)
    rows = session.scalars(select(Artifact).join(checkpoint, Artifact.parent_id == checkpoint.id).where(
        Artifact.cache_key == cache_key, Artifact.kind == "embeddings", checkpoint.kind == "checkpoint",
        checkpoint.sha256 == checkpoint_sha).order_by(Artifact.id).limit(5))
    return next((a for a in rows if store.exists(a.storage_key)), None)


def register_checkpoint(session: Session, store: ArtifactStore, run: Run, received: Received, *,
                        filename: str | None, step: int, dataset: Dataset, params: dict,
                        suites: list[str] | None, idempotency: Idempotency | None = None) -> Registered:
    """Validate a checkpoint, store it, and queue its embedding on `dataset` (or reuse cached embeddings)."""
    from repscope.architectures import checkpoint_arch
    from repscope.checkpoints import CheckpointError, inspect_checkpoint

    try:
        info = inspect_checkpoint(received.path, filename)
        try:
            params = {**params, "arch": checkpoint_arch(params.get("arch"), info.format, info.named_arch,
                                                        needs_arch=info.needs_arch)}
        except ValueError as exc:
            raise UploadRejected(str(exc)) from None
        suites = suites if suites is not None else default_suites(bool(dataset.classes))
        on_encoder, on_embeddings = split_checkpoint_suites(suites)
        dataset_hash = dataset_content_hash(dataset)
        if dataset.kind == "path":  # the worker checks the folder still has this manifest before it embeds
            params = {**params, "dataset_manifest": dataset_hash}
    except CheckpointError as exc:
        received.path.unlink(missing_ok=True)
        raise UploadRejected(str(exc)) from exc
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    dedupe = dedupe_key("checkpoint", step, received.sha256, dataset.name, params=params)
    params = {**params, "dataset": dataset.name, "suites": on_embeddings}
    cache_key = embedding_cache_key(received.sha256, dataset_hash, params) if dataset_hash else None
    ext = {"export": "pt2", "safetensors": "safetensors", "hf": "zip"}.get(info.format, "pt")
    existing = _by_dedupe_key(session, run.id, dedupe)
    if existing is not None:
        return _reuse(store, existing, received, ext)

    key, created = store.commit(received, ext)
    try:
        artifact = Artifact(run_id=run.id, step=step, kind="checkpoint", format=info.format,
                            sha256=received.sha256, bytes=received.size, storage_key=key, dataset=dataset.name,
                            meta={**info.to_meta(), "filename": filename, "arch": params.get("arch")},
                            dedupe_key=dedupe, **_idempotency_columns(idempotency))
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
        cached = find_cached_embeddings(session, store, cache_key, received.sha256) if embed and cache_key else None
        if embed is not None and cached is not None:
            session.flush()  # the checkpoint's id is part of the derived artifact's dedupe key
            derived = Artifact(run_id=run.id, step=step, kind="embeddings", format=cached.format,
                               sha256=cached.sha256, bytes=cached.bytes, storage_key=cached.storage_key,
                               meta=cached.meta, dataset=dataset.name, parent=artifact, cache_key=cache_key,
                               dedupe_key=dedupe_key("embeddings", step, cached.sha256, dataset.name,
                                                     parent_id=artifact.id))
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
    except IntegrityError as exc:
        return _lost_race(session, store, key, created, exc, run, dedupe, idempotency)
    except BaseException:
        _undo(session, store, key, created)
        raise
    return Registered(artifact, evaluations, deduplicated=False)
