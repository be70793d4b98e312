"""Settings shared by the API, the worker and the CLI; every field reads REPSCOPE_<NAME> from the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPSCOPE_", extra="ignore")

    # Where artifacts, the embedded SQLite database and the embedded broker's folders live.
    data_dir: Path = Path("./data")
    # SQLAlchemy URL; default: SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    # PostgreSQL connections each API process keeps open, and how many more it may open under a burst (closed
    # again when returned). Per process: --workers N uvicorn opens up to N x (size + overflow).
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Celery broker; default: kombu's filesystem transport in data_dir/broker (no Redis needed).
    broker_url: str | None = None
    # Celery queue the evaluations go to.
    queue: str = "repscope"
    # Base URL the worker (and the CLI) use to reach the API.
    api_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000

    # Upload limits, enforced while the body streams in.
    max_upload_bytes: int = 8 * 1024**3
    max_elements: int = 4_000_000_000  # N x D of one embeddings file
    # A body that sends nothing for this long is dropped (408) and its temp file removed.
    upload_idle_timeout_s: float = Field(default=60.0, gt=0)
    # An upload or worker result averaging less than this (checked once per idle-timeout window) is a 408: a
    # byte every 50 s never trips the idle timeout. 0 turns it off. Other JSON bodies must arrive whole within
    # upload_idle_timeout_s.
    upload_min_bytes_per_s: float = Field(default=1024.0, ge=0)
    # Every .npz (embeddings and datasets), checked on its zip directory before any member is inflated: the
    # declared total (None: max_upload_bytes, so compression never admits more than an uncompressed upload
    # could), and each member's compression ratio from zip_ratio_min_bytes up (sorted labels compress well).
    max_npz_expanded_bytes: int | None = Field(default=None, ge=0)
    max_zip_ratio: float = Field(default=200.0, gt=1)
    zip_ratio_min_bytes: int = Field(default=16 * 1024**2, ge=0)

    # Queue reliability: the database is the source of truth, the broker only transport.
    sweep_interval_s: float = 10.0  # how often the sweeper looks
    requeue_after_s: float = 120.0  # a `queued` evaluation not claimed for this long is sent again
    lease_s: float = 120.0  # a `running` evaluation without a heartbeat for this long is presumed lost
    heartbeat_s: float = 15.0  # how often a worker renews the lease of the evaluation it runs
    max_attempts: int = 3
    task_time_limit_s: float | None = 3600.0  # an evaluation running longer is stopped and marked failed

    # Dataset uploads: limits checked on the archive's directory before anything is extracted.
    max_dataset_images: int = 2_000_000
    max_zip_members: int = 200_000
    max_zip_expanded_bytes: int = 20 * 1024**3
    # JSON request bodies (counted while they stream in); worker results carry figure data, so they get more.
    max_json_bytes: int = 1024**2
    max_result_bytes: int = 256 * 1024**2
    # Nesting depth of any JSON request body (free-form fields such as a run's config: repscope.schemas).
    max_json_depth: int = Field(default=64, ge=2, le=500)

    # Auth. Writes always need a token; reads need one unless public_read. Tokens are stored as sha256 hashes.
    public_read: bool = False
    # Bootstrap secrets: at start the API makes sure a token with this secret exists (admin / worker scope).
    # A worker uses worker_token (else REPSCOPE_TOKEN) as its credential.
    admin_token: str | None = None
    worker_token: str | None = None
    # Signs browser session cookies; default: a random key kept in data_dir/secret_key (share it across replicas).
    secret_key: str | None = None
    session_max_age_s: float = 7 * 24 * 3600.0
    cookie_secure: bool | None = None  # None: Secure when the request came over https
    # Requests per minute per token (per client address for anonymous reads), per API process; 0 = no limit.
    rate_limit_per_minute: int = 3000
    rate_limit_burst: int = 300

    # Routing: when light_queue is set, evaluations of the light suites go there and the rest to `queue`
    # (e.g. queue=gpu for embedding, probes, equivariance and backdoor; light_queue=cpu for spectrum).
    light_queue: str | None = None
    light_suites: str = "spectrum"

    # Server-side dataset folders may only be registered under these roots (":"-separated paths).
    dataset_roots: str = ""

    # Worker: where a worker that does not share data_dir keeps downloaded artifacts; device for suites.
    worker_cache_dir: Path | None = None
    device: str | None = None  # "cuda", "cpu" or None = cuda when available
    # Uploaded model code (loading and forward of every checkpoint) runs in a child process under bubblewrap:
    # no network, no secrets, writes only to a scratch dir (worker.sandbox). "off" runs that child without
    # bubblewrap (explicit opt-out where the kernel refuses user namespaces; logged, recorded in results).
    sandbox: Literal["bwrap", "off"] = "bwrap"
    # Address-space limit of that child on CPU runs (RLIMIT_AS, MiB); None: none. Ignored on CUDA, whose
    # driver reserves far more virtual memory than it uses.
    sandbox_memory_mb: int | None = Field(default=None, ge=256)
    # Server folders are embedded streamed, image by image (worker.embed_stream): DataLoader worker processes
    # decoding and transforming (None: the CPU count), and the share of unreadable images skipped (counted,
    # reported) before the embed step fails naming them.
    loader_workers: int | None = Field(default=None, ge=0, le=64)
    max_unreadable_fraction: float = Field(default=0.01, ge=0.0, le=1.0)

    @property
    def light_suite_names(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.light_suites.split(",") if s.strip())

    @property
    def dataset_root_paths(self) -> list[Path]:
        return [Path(p) for p in self.dataset_roots.split(":") if p]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'repscope.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
