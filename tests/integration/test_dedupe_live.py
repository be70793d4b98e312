"""Identical concurrent uploads store one artifact (issue 16, finding 8): 8 parallel uploads of the same file
to a real API process, 4 trials, on PostgreSQL (where two artifacts were stored in 2 of 4 trials before the
unique (run, dedupe key) constraint) and on SQLite."""

from __future__ import annotations

import io
import threading
import uuid

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_HEADERS
from tests.integration.procs import Proc, base_env, free_port, start_api, wait_healthy

pytestmark = pytest.mark.integration
PARALLEL, TRIALS = 8, 4


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def api_url(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"dedupe-{request.param}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {}
    if request.param == "postgresql":
        extra["REPSCOPE_DATABASE_URL"] = request.getfixturevalue("make_postgres_database")()
    proc: Proc = start_api(base_env(tmp / "data", url, **extra), port, tmp)
    try:
        wait_healthy(url, proc.proc, timeout=60)
        yield url
    finally:
        proc.stop()
        print(proc.log_tail())


def npy(seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).standard_normal((256, 16)).astype(np.float32))
    return buf.getvalue()


def parallel_uploads(url: str, run_id: int, bodies: list[bytes], headers: dict[str, str]) -> list[httpx.Response]:
    """Send every body at once (a barrier lines the threads up), each on its own connection."""
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        with httpx.Client(base_url=url, headers={**ADMIN_HEADERS, **headers}, timeout=60) as client:
            barrier.wait()
            responses[i] = client.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "3", "suites": "spectrum"},
                                       files={"file": ("z.npy", bodies[i])})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return [r for r in responses if r is not None]


def new_run(url: str) -> int:
    response = httpx.post(f"{url}/api/v1/runs", headers=ADMIN_HEADERS,
                          json={"project": "dedupe", "name": uuid.uuid4().hex[:8]})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run_state(url: str, run_id: int) -> tuple[list[dict], int]:
    artifacts = httpx.get(f"{url}/api/v1/runs/{run_id}/artifacts", headers=ADMIN_HEADERS).json()
    evaluations = httpx.get(f"{url}/api/v1/evaluations", params={"run": run_id}, headers=ADMIN_HEADERS).json()
    return artifacts, evaluations["total"]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_parallel_identical_uploads_store_one_artifact(api_url, trial):
    run_id = new_run(api_url)
    responses = parallel_uploads(api_url, run_id, [npy(trial)] * PARALLEL, {})
    assert [r.status_code for r in responses] == [202] * PARALLEL, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert len({b["artifact"]["id"] for b in bodies}) == 1
    assert sorted(b["deduplicated"] for b in bodies) == [False] + [True] * (PARALLEL - 1)
    assert len({tuple(e["id"] for e in b["evaluations"]) for b in bodies}) == 1
    artifacts, evaluations = run_state(api_url, run_id)
    assert len(artifacts) == 1 and evaluations == 1


def test_parallel_reuse_of_one_key_with_two_bodies_binds_it_once(api_url):
    run_id = new_run(api_url)
    bodies = [npy(100), npy(101)] * (PARALLEL // 2)
    responses = parallel_uploads(api_url, run_id, bodies, {"Idempotency-Key": "job-7:step-3:" + uuid.uuid4().hex})
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * (PARALLEL // 2) + [409] * (PARALLEL // 2), [r.text for r in responses]
    won = {r.json()["artifact"]["id"] for r in responses if r.status_code == 202}
    assert len(won) == 1
    assert all("different request" in r.json()["detail"] for r in responses if r.status_code == 409)
    artifacts, evaluations = run_state(api_url, run_id)
    assert len(artifacts) == 1 and evaluations == 1
