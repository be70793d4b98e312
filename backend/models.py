"""The data model of DESIGN.md: Project, Run, Dataset, Artifact, Evaluation, Metric, ApiToken, BrowserSession,
Worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    runs: Mapped[list[Run]] = relationship(back_populates="project")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_run_project_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false(), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    project: Mapped[Project] = relationship(back_populates="runs")


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20), default="upload")  # builtin | upload | path
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_shape: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    classes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    format: Mapped[str | None] = mapped_column(String(20), nullable=True)  # npz | imagefolder | generated | folder
    storage_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (Index("ix_artifact_run_step", "run_id", "step"),
                      UniqueConstraint("idempotency_key", name="uq_artifact_idempotency_key"),
                      UniqueConstraint("run_id", "dedupe_key", name="uq_artifact_dedupe"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    kind: Mapped[str] = mapped_column(String(20))  # embeddings | checkpoint
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset: Mapped[str | None] = mapped_column(String(200), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    # derived embeddings: sha256 of (checkpoint sha, dataset identity, preprocessing) — the embedding cache
    cache_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # client-chosen key, unique in the database: a retried request with the same key returns this artifact instead
    # of a new one, only for the same token, run and request (fingerprint: sha256 of file hash, name and fields)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    idempotency_token_id: Mapped[int | None] = mapped_column(ForeignKey(
        "api_tokens.id", ondelete="SET NULL", name="fk_artifacts_idempotency_token_id"), nullable=True)
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # sha256 of (kind, step, sha256, dataset, checkpoint params, parent): unique per run, so identical concurrent
    # uploads store one artifact on every database (NULL on rows older than migration 0005)
    dedupe_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run: Mapped[Run] = relationship()
    parent: Mapped[Artifact | None] = relationship(remote_side="Artifact.id")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="artifact", order_by="Evaluation.id")


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluation_status", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    suite: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)  # informational: the claim decides
    # sha256 of the claim id the current lease was issued with; every PATCH / result must present that id
    claim_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(200), nullable=True)  # Celery queue it was last sent to
    device: Mapped[str | None] = mapped_column(String(50), nullable=True)  # the claiming worker's device
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # when it last joined its queue (upload, retry, sweeper requeue): the order of queue positions
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    artifact: Mapped[Artifact] = relationship(back_populates="evaluations")
    metrics: Mapped[list[Metric]] = relationship(back_populates="evaluation", cascade="all, delete-orphan")


class Metric(Base):
    """A value at a training step: computed by an evaluation, or logged by the training job (evaluation NULL)."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "key", name="uq_metric_evaluation_key"),
        Index("ix_metric_run_key_step", "run_id", "key", "step"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"),
                                                      nullable=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    evaluation: Mapped[Evaluation] = relationship(back_populates="metrics")


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BrowserSession(Base):
    """A signed-in browser: the cookie carries a random id of which only the sha256 is stored here. Deleted on
    logout, on revocation of its token, and (opportunistically) once expired; ids are never reused."""

    __tablename__ = "browser_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    csrf_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Worker(Base):
    """A worker as it introduced itself on its claims: device and the queues it took work from; last_seen is
    renewed by every claim and heartbeat."""

    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    device: Mapped[str | None] = mapped_column(String(50), nullable=True)
    queues: Mapped[str | None] = mapped_column(String(500), nullable=True)  # comma list, sorted
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
