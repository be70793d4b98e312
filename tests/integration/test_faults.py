"""Faults survived, with real processes: a worker SIGKILLed mid-evaluation, the API killed mid-upload,
a suite that raises, a suite that runs out of memory, a job past its time limit."""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest
from sqlalchemy import create_engine, text

import repscope
from repscope.cli import worker_command
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import cluster_deployment, services_or_skip
from tests.integration.procs import (
    Proc,
    base_env,
    free_port,
    start_api,
    start_serve,
    start_worker,
    wait_healthy,
)
from tests.reference import rankme_numpy, structured_embeddings

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str, logs=lambda: ""):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} not reached in {timeout} s\n{logs()}")


def test_worker_killed_mid_evaluation_is_retried_and_finishes_once(make_postgres_database, tmp_path):
    services_or_skip()
    database = make_postgres_database()
    dep = cluster_deployment(tmp_path, database, with_worker=False)
    # a live worker renews its lease every second from a side thread, whatever its suite is doing
    dep.env.update(REPSCOPE_LEASE_S="4", REPSCOPE_HEARTBEAT_S="1", REPSCOPE_SWEEP_INTERVAL_S="1")
    dep.procs[0].stop()
    api = start_api(dep.env, int(dep.url.rsplit(":", 1)[1]), tmp_path)
    dep.procs = [api]
    try:
        wait_healthy(dep.url, api.proc)
        first = start_worker(dep.env, dep.queue, tmp_path)
        dep.procs.append(first)
        client = repscope.Client(dep.url)
        run = client.run(project="faults", name="killed-worker")
        z = structured_embeddings(20_000, 768, seed=2, decay=0.995)
        [eid] = run.log_embeddings(step=1, embeddings=z, suites=["spectrum"]).ids()
        wait_for(lambda: client.evaluation(eid).progress > 0.05, 120, "evaluation running", dep.logs)
        first.stop(signal.SIGKILL)
        assert client.evaluation(eid).status == "running"
        dep.procs.append(start_worker(dep.env, dep.queue, tmp_path))
        [done] = client.wait([eid], timeout=180)
        assert done.status == "succeeded" and done.attempts == 2
        assert abs(done.metrics["rankme"] - rankme_numpy(z)) / rankme_numpy(z) < 1e-6
        engine = create_engine(database)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM metrics WHERE evaluation_id = :e"), {"e": eid}).scalar()
        engine.dispose()
        assert rows == len(done.metrics)  # exactly one set of metrics
    except Exception:
        print(dep.logs())
        raise
    finally:
        for proc in reversed(dep.procs):
            proc.stop(signal.SIGKILL)


def test_api_killed_mid_upload_leaves_nothing_and_retry_succeeds_once(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    env = base_env(data_dir, url)
    serve = start_serve(env, port, data_dir, tmp_path)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        client = repscope.Client(url)
        run = client.run(project="faults", name="api-killed", background=False)
        boundary = "xxBOUNDARYxx"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"step\"\r\n\r\n1\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"z.npy\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall((f"POST /api/v1/runs/{run.id}/artifacts HTTP/1.1\r\nHost: x\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
                      f"Content-Length: 50000000\r\nIdempotency-Key: upload-after-crash-1\r\n\r\n").encode() + head)
        sock.sendall(b"\x93NUMPY" + b"\x00" * 2_000_000)  # half an upload...
        tmp_dir = data_dir / "artifacts" / "tmp"
        wait_for(lambda: any(tmp_dir.iterdir()), 30, "partial upload on disk")
        serve.stop(signal.SIGKILL)  # ...and the API dies
        sock.close()
        serve = start_serve(env, port, data_dir, tmp_path)
        wait_healthy(url, serve.proc, timeout=90)
        assert list(tmp_dir.iterdir()) == []  # the restarted API removed its predecessor's partial file
        assert client.http.get(f"/runs/{run.id}/artifacts").json() == []
        z = structured_embeddings(200, 8, seed=1)
        np.save(tmp_path / "z.npy", z)
        accepted = client.upload_file(run.id, tmp_path / "z.npy", step=1, idempotency_key="upload-after-crash-1")
        again = client.upload_file(run.id, tmp_path / "z.npy", step=1, idempotency_key="upload-after-crash-1")
        assert again.artifact.id == accepted.artifact.id and again.deduplicated
        assert len(client.http.get(f"/runs/{run.id}/artifacts").json()) == 1
    finally:
        serve.stop()


def test_failing_suite_and_time_limit_leave_the_worker_serving(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "data", url, REPSCOPE_TASK_TIME_LIMIT_S="1")
    serve = start_serve(env, port, tmp_path / "data", tmp_path)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        client = repscope.Client(url)
        run = client.run(project="faults", name="raises", background=False)
        one_row = np.ones((1, 4), dtype=np.float32)  # valid file, but no spectrum exists for one sample
        [bad] = client.wait(run.log_embeddings(step=1, embeddings=one_row).ids(), raise_on_failure=False,
                            timeout=120)
        assert bad.status == "failed" and "at least 2 rows" in bad.error
        slow = structured_embeddings(20_000, 768, seed=3, decay=0.995)
        [late] = client.wait(run.log_embeddings(step=2, embeddings=slow).ids(), raise_on_failure=False,
                             timeout=180)
        assert late.status == "failed" and "time limit of 1 s" in late.error
        z = structured_embeddings(300, 16, seed=4)
        [good] = client.wait(run.log_embeddings(step=3, embeddings=z).ids(), timeout=120)
        assert good.status == "succeeded"  # the same worker process kept serving
        assert good.worker == bad.worker == late.worker
    finally:
        serve.stop()


WORKER_MEMORY_LIMIT = 4 << 30  # address space of the worker process (prlimit --as): torch runs, a 7 GB Gram does not


def test_suite_out_of_memory_fails_readably_and_the_worker_goes_on(tmp_path):
    """A worker limited to 4 GiB of address space gets embeddings whose D x D float64 Gram needs 7.2 GB: the
    evaluation fails saying it ran out of memory, and the same worker process then finishes the next job."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "data", url)
    api = start_api(env, port, tmp_path)
    worker = Proc("worker", ["prlimit", f"--as={WORKER_MEMORY_LIMIT}", "--",
                             *worker_command("repscope", "oom-test@%h")], env, tmp_path)
    try:
        wait_healthy(url, api.proc, timeout=60)
        client = repscope.Client(url)
        run = client.run(project="faults", name="oom", background=False)
        wide = np.random.default_rng(0).standard_normal((64, 30_000)).astype(np.float32)
        [big] = client.wait(run.log_embeddings(step=1, embeddings=wide, suites=["spectrum"]).ids(),
                            raise_on_failure=False, timeout=180)
        assert big.status == "failed", worker.log_tail()
        assert big.error.startswith("out of memory on cpu") and "7200000000 bytes" in big.error
        z = structured_embeddings(300, 16, seed=5)
        [good] = client.wait(run.log_embeddings(step=2, embeddings=z, suites=["spectrum"]).ids(), timeout=120)
        assert good.status == "succeeded" and good.worker == big.worker
        assert good.metrics["rankme"] == pytest.approx(rankme_numpy(z), rel=1e-6)
        assert worker.proc.poll() is None  # the worker process survived
    finally:
        worker.stop()
        api.stop()
