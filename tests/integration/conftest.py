"""Deployments for integration tests: embedded (`repscope serve`) and cluster (PostgreSQL + Redis)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repscope.testing import PG_ADMIN_URL, REDIS_URL, services_problem
from tests.integration.procs import (
    Proc,
    base_env,
    free_port,
    start_api,
    start_serve,
    start_worker,
    wait_healthy,
)

REQUIRE_SERVICES = os.environ.get("REPSCOPE_REQUIRE_SERVICES") == "1"


@dataclass
class Deployment:
    name: str
    url: str
    data_dir: Path
    env: dict[str, str]
    queue: str
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.procs)


def services_or_skip() -> None:
    """Skip (or fail under CI's REPSCOPE_REQUIRE_SERVICES=1) when PostgreSQL or Redis is absent."""
    problem = services_problem()
    if problem:
        reason = "cluster services unavailable: " + problem
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (REPSCOPE_REQUIRE_SERVICES=1)")
        print(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def make_postgres_database():
    """Factory of fresh PostgreSQL databases, all dropped at the end of the session."""
    services_or_skip()
    import psycopg

    names: list[str] = []

    def make() -> str:
        name = f"repscope_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    yield make
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _embedded(tmp: Path) -> Deployment:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp / "data"
    env = base_env(data_dir, url)
    dep = Deployment("embedded", url, data_dir, env, "repscope", tmp)
    serve = start_serve(env, port, data_dir, tmp)
    dep.procs.append(serve)
    wait_healthy(url, serve.proc, timeout=90)
    return dep


def cluster_deployment(tmp: Path, database_url: str, *, with_worker: bool = True) -> Deployment:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    queue = f"repscope-test-{uuid.uuid4().hex[:8]}"
    env = base_env(tmp / "data", url, REPSCOPE_DATABASE_URL=database_url, REPSCOPE_BROKER_URL=REDIS_URL,
                   REPSCOPE_QUEUE=queue, REPSCOPE_REQUEUE_AFTER_S="4")
    dep = Deployment("cluster", url, tmp / "data", env, queue, tmp)
    api = start_api(env, port, tmp)
    dep.procs.append(api)
    wait_healthy(url, api.proc, timeout=60)
    if with_worker:
        dep.procs.append(start_worker(env, queue, tmp))
    return dep


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def deployment(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        dep = _embedded(tmp)
    else:
        dep = cluster_deployment(tmp, request.getfixturevalue("make_postgres_database")())
    yield dep
    for proc in reversed(dep.procs):
        proc.stop()
    print(dep.logs())
