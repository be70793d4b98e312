"""Shared fixtures. Server imports stay inside fixtures so the pure-suite tests also run on a machine that
has only torch and numpy (the GPU box)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

# Credentials every test deployment starts with (REPSCOPE_ADMIN_TOKEN / REPSCOPE_WORKER_TOKEN on the server).
# Clients made in the test process pick up REPSCOPE_TOKEN, as a training job would.
ADMIN_TOKEN = "rs_test-admin-0123456789abcdef"
WORKER_TOKEN = "rs_test-worker-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
os.environ["REPSCOPE_TOKEN"] = ADMIN_TOKEN


@pytest.fixture
def settings(tmp_path):
    from repscope.settings import Settings

    return Settings(data_dir=tmp_path / "data", max_upload_bytes=5_000_000, requeue_after_s=60, lease_s=30,
                    admin_token=ADMIN_TOKEN, worker_token=WORKER_TOKEN)


@pytest.fixture
def app(settings):
    from backend.app import create_app

    return create_app(settings, run_sweeper=False)


@pytest.fixture
def api(app):
    """The real FastAPI app over its real SQLite database and filesystem broker (no worker consumes), called
    with the admin token."""
    from fastapi.testclient import TestClient

    with TestClient(app, headers=ADMIN_HEADERS) as client:
        yield client


@pytest.fixture
def run_id(api) -> int:
    response = api.post("/api/v1/runs", json={"project": "simclr", "name": "lr0.3", "config": {"lr": 0.3}})
    assert response.status_code == 201
    return response.json()["id"]


@contextlib.contextmanager
def database_url(kind: str) -> Iterator[str | None]:
    """None for "sqlite" (the app's own file in the data dir), else the URL of a fresh PostgreSQL database that is
    dropped afterwards; skipped without PostgreSQL (a failure under REPSCOPE_REQUIRE_SERVICES=1)."""
    if kind == "sqlite":
        yield None
        return
    from repscope.testing import PG_ADMIN_URL, services_problem

    problem = services_problem()
    if problem:
        if os.environ.get("REPSCOPE_REQUIRE_SERVICES") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    import psycopg

    name = f"repscope_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
