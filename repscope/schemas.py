"""Wire schemas of the REST API (v1): what the backend returns and the client and worker read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

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


# Free-form JSON a client stores (a run's config): nesting and size limits, so every reader can serialize it.
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_BYTES = 256 * 1024
MAX_TAG_LENGTH = 100


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of the dicts and lists in `value` (a scalar is 0), counted level by level without
    recursion; counting stops at limit + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, dict | list)]
        if not level:
            break
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def check_free_json(value: Any, what: str, max_depth: int, max_bytes: int) -> Any:
    """`value` if it nests at most `max_depth` levels and its JSON is valid Unicode of at most `max_bytes`
    (NaN and Infinity are not JSON: PostgreSQL refuses them); else ValueError naming the limit."""
    depth = json_depth(value, max_depth)
    if depth > max_depth:
        raise ValueError(f"{what} nests more than {max_depth} levels deep; at most {max_depth} are accepted")
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except ValueError as exc:  # NaN / Infinity, or a lone surrogate (UnicodeEncodeError)
        problem = "a string that is not valid Unicode" if isinstance(exc, UnicodeError) else "NaN or Infinity"
        raise ValueError(f"{what} holds {problem}, which JSON cannot store") from None
    if size > max_bytes:
        raise ValueError(f"{what} is {size} bytes as JSON; at most {max_bytes} are accepted")
    return value


# No "/" and no leading whitespace. \x85 (NEL) is spelled out: the server's regex engine counts it as \s, the
# ECMA-262 regexes of JSON Schema tools do not, and the documented rule must be the one enforced.
RUN_NAME = r"^[^/\s\x85][^/]*$"


class RunCreate(BaseModel):
    project: str = Field(min_length=1, max_length=200, pattern=RUN_NAME)
    name: str = Field(min_length=1, max_length=200, pattern=RUN_NAME)
    config: dict[str, Any] = Field(default_factory=dict, description=f"free-form JSON object: at most "
                                   f"{MAX_CONFIG_DEPTH} levels deep and {MAX_CONFIG_BYTES} bytes")
    tags: list[Annotated[str, Field(max_length=MAX_TAG_LENGTH)]] = Field(default_factory=list, max_length=50)
    update: StrictBool = Field(False, description="an existing run with another config: replace its config with this one "
                         "(without it, the request answers 409 naming the differing top-level keys)")

    @field_validator("config")
    @classmethod
    def _bounded_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_free_json(value, "config", MAX_CONFIG_DEPTH, MAX_CONFIG_BYTES)


MAX_NOTES_LENGTH = 20_000


class RunUpdate(BaseModel):
    """PATCH /runs/{id}: only the fields sent change. `tags` replaces the whole list."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200, pattern=RUN_NAME)
    notes: str | None = Field(None, max_length=MAX_NOTES_LENGTH)
    tags: list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH)]] | None = Field(None, max_length=50)
    archived: StrictBool | None = None  # strict: 0/1 or "true" are refused, not coerced


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
    notes: str | None = None
    archived: bool = False
    created_at: datetime


class RunDeleted(_Read):
    """DELETE /runs/{id}: what went with the run (files: stored files no other artifact or dataset shared)."""

    id: int
    metrics: int
    evaluations: int
    artifacts: int
    files: int


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
    classes: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=100_000,
        description="ImageFolder / DINOv2 folders: only these classes (folder names such as ImageNet wnids, or "
                    "DINOv2 labels.txt names), e.g. the usual ImageNet-100 list")
    per_class: int | None = Field(default=None, ge=1, le=10_000_000,
                                  description="at most this many images per class and split (the first, by path)")


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
    # queue control (backend.services.evaluations): `error` above is the user-facing message (no file paths)
    error_detail: str | None = Field(default=None, description="the worker's traceback behind `error`: sent to "
                                                               "admin tokens only, else null")
    queue_position: int | None = Field(default=None, description="queued: 1 + the queued evaluations ahead of it "
                                                                 "on its queue (FIFO: upload or retry time)")
    elapsed_s: float | None = Field(default=None, description="seconds since the claim (running), or how long it "
                                                              "ran (finished)")
    eta_s: float | None = Field(default=None, description="running, progress >= 5 %: elapsed / progress x "
                                                          "(1 - progress) seconds left")


class ClaimRequest(BaseModel):
    worker: str = Field(max_length=200)
    device: str | None = Field(default=None, max_length=50, description="where the worker runs suites, e.g. cuda")
    queue: str | None = Field(default=None, max_length=200, description="the queue the task was delivered from")


def _claim_id() -> Any:
    return Field(default=None, max_length=100,
                 description="the claim id the claim returned: required (a missing or stale one is a 409)")


class ClaimResponse(BaseModel):
    """What a worker needs to run an evaluation: the evaluation, its artifact, where to read the file, and the
    claim id that every PATCH, result and derived-embeddings upload of this lease must present."""

    claim: str = Field(description="random id of this lease; a re-claim after the lease expired issues a new one")
    evaluation: EvaluationRead
    artifact: ArtifactRead
    local_path: str | None = None  # set when the worker shares the API's data dir
    download_url: str


def json_numbers(value: Any) -> Any:
    """Numbers in a request body are JSON numbers: pydantic's lax mode would read `false` as 0 and "1" as 1
    (a field validator, so the JSON Schema keeps its bounds and Python callers may pass numpy scalars)."""
    values = value.values() if isinstance(value, dict) else [value]
    if any(isinstance(v, bool | str) for v in values):
        raise ValueError("must be a JSON number, not a boolean or a string")
    return value


class EvaluationPatch(BaseModel):
    claim: str | None = _claim_id()
    worker: str | None = Field(default=None, max_length=200)  # informational; the claim id decides
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    _numbers = field_validator("progress", mode="before")(json_numbers)
    message: str | None = Field(default=None, max_length=2000)
    status: Status | None = None
    error: str | None = Field(default=None, max_length=20000)


class EvaluationResultIn(BaseModel):
    claim: str | None = _claim_id()
    worker: str | None = Field(default=None, max_length=200)  # informational; the claim id decides
    metrics: dict[str, float]
    _numbers = field_validator("metrics", mode="before")(json_numbers)
    figures: dict[str, Any] = Field(default_factory=dict)
    variant: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


LOGGED_METRIC_NAME = r"^[A-Za-z0-9_./@:-]{1,200}$"  # backend.services.metrics.LOGGED_KEY
# Training steps stop at JavaScript's largest exact integer: past it most JSON tools read integers as floats
# (2**53 + 1 as 2**53), so a bound there would be checked differently by each of them.
MAX_STEP = 2**53 - 1


class MetricsLog(BaseModel):
    """Scalars a training job logs itself (loss, lr, its own probe...), charted beside repscope's metrics."""

    step: int = Field(ge=0, le=MAX_STEP)  # as an upload's step
    metrics: dict[Annotated[str, Field(pattern=LOGGED_METRIC_NAME)], float] = Field(
        min_length=1, max_length=200, json_schema_extra={"additionalProperties": False})  # other names: 422
    _numbers = field_validator("step", "metrics", mode="before")(json_numbers)


class MetricPoint(BaseModel):
    step: int
    value: float
    evaluation_id: int | None  # None: logged by the training job
    dataset: str | None = None


class MetricSeries(BaseModel):
    run_id: int
    key: str
    points: list[MetricPoint]
    # which namespace the points are from: "computed" (by evaluations) or "logged" (by the training job)
    source: str | None = None


class Health(BaseModel):
    status: str
    database: str
    broker: str
    workers_seen: list[str]
    version: str


TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$"  # backend.services.tokens.TOKEN_NAME
Scope = Literal["read", "write", "worker", "admin"]  # backend.services.tokens.SCOPES


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=TOKEN_NAME,
                      description="unique name, e.g. 'alice' or 'cluster-gpu0'")
    scopes: list[Scope] = Field(min_length=1, max_length=4, description="read, write, worker and/or admin")


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
