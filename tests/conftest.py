"""Shared fixtures. Server imports stay inside fixtures so the pure-suite tests also run on a machine that
has only torch and numpy (the GPU box)."""

from __future__ import annotations

import os

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
