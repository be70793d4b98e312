"""Wire schemas of the REST API (v1): what the backend returns and the client and worker read."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = {Status.succeeded, Status.failed, Status.cancelled}


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        """Times are UTC; SQLite hands them back without an offset, PostgreSQL with one: always say so."""
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class RunCreate(BaseModel):
    project: str = Field(min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")
    config: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, max_length=50)


class ProjectRead(_Read):
    id: int
    name: str
    created_at: datetime
    n_runs: int = 0


class RunRead(_Read):
    id: int
    project: str
    name: str
    config: dict[str, Any]
    tags: list[str]
    created_at: datetime


class ArtifactRead(_Read):
    id: int
    run_id: int
    step: int
    kind: str
    format: str
    sha256: str
    bytes: int
    dataset: str | None
    meta: dict[str, Any]
    created_at: datetime


class DatasetRead(_Read):
    id: int
    name: str
    kind: str
    format: str | None
    n: int | None
    image_shape: list[int] | None
    classes: list[str] | None
    sha256: str | None
    description: str | None
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class DatasetFolderCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    path: str = Field(min_length=1, max_length=4096)
    description: str | None = Field(default=None, max_length=2000)


class EvaluationBrief(_Read):
    id: int
    suite: str
    status: Status


class UploadAccepted(BaseModel):
    artifact: ArtifactRead
    evaluations: list[EvaluationBrief]
    deduplicated: bool = False


class EvaluationRead(_Read):
    id: int
    artifact_id: int
    run_id: int
    step: int
    suite: str
    params: dict[str, Any]
    status: Status
    progress: float
    message: str | None
    error: str | None
    attempts: int
    worker: str | None
    queue: str | None = None  # the Celery queue it was last sent to
    device: str | None = None  # the device its worker reported when claiming it
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metrics: dict[str, float] = Field(default_factory=dict)
    result: dict[str, Any] | None = None


class ClaimRequest(BaseModel):
    worker: str = Field(max_length=200)
    device: str | None = Field(default=None, max_length=50, description="where the worker runs suites, e.g. cuda")
    queue: str | None = Field(default=None, max_length=200, description="the queue the task was delivered from")


class ClaimResponse(BaseModel):
    """What a worker needs to run an evaluation: the evaluation, its artifact, where to read the file."""

    evaluation: EvaluationRead
    artifact: ArtifactRead
    local_path: str | None = None  # set when the worker shares the API's data dir
    download_url: str


class EvaluationPatch(BaseModel):
    worker: str | None = Field(default=None, max_length=200)  # when given, must be the claiming worker
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    message: str | None = Field(default=None, max_length=2000)
    status: Status | None = None
    error: str | None = Field(default=None, max_length=20000)


class EvaluationResultIn(BaseModel):
    worker: str | None = Field(default=None, max_length=200)  # when given, must be the claiming worker
    metrics: dict[str, float]
    figures: dict[str, Any] = Field(default_factory=dict)
    variant: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class MetricsLog(BaseModel):
    """Scalars a training job logs itself (loss, lr, its own probe...), charted beside repscope's metrics."""

    step: int = Field(ge=0, le=2**62)  # as an upload's step: a SQL BIGINT holds it on every database
    metrics: dict[str, float] = Field(min_length=1, max_length=200)


class MetricPoint(BaseModel):
    step: int
    value: float
    evaluation_id: int | None  # None: logged by the training job
    dataset: str | None = None


class MetricSeries(BaseModel):
    run_id: int
    key: str
    points: list[MetricPoint]


class Health(BaseModel):
    status: str
    database: str
    broker: str
    workers_seen: list[str]
    version: str


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="unique name, e.g. 'alice' or 'cluster-gpu0'")
    scopes: list[str] = Field(min_length=1, max_length=4, description="read, write, worker and/or admin")


class TokenRead(_Read):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    last_used: datetime | None = None


class TokenCreated(TokenRead):
    token: str = Field(description="the secret; shown once, store it now")


class WhoAmI(BaseModel):
    name: str
    scopes: list[str]
    via: str  # bearer | cookie | anonymous
