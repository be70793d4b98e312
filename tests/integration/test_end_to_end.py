"""End to end with real processes: API over HTTP, a Celery worker, a real broker and database.

Runs once on the embedded deployment (`repscope serve`: SQLite + filesystem broker) and once on the cluster
shape (PostgreSQL + Redis), and checks RankMe of uploaded files against numpy's SVD.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import repscope
from repscope import RepscopeError
from tests.integration.conftest import cluster_deployment, services_or_skip
from tests.integration.procs import base_env, free_port, start_serve, start_worker, wait_healthy
from tests.reference import rankme_numpy, structured_embeddings

pytestmark = pytest.mark.integration
REL_TOL = 1e-6


def write_format(path, fmt: str, z: np.ndarray, labels: np.ndarray):
    if fmt == "npy":
        np.save(path, z)
    elif fmt == "npz":
        np.savez_compressed(path, embeddings=z, labels=labels)
    elif fmt == "safetensors":
        save_file({"embeddings": z, "labels": labels}, str(path))
    elif fmt == "pt":
        torch.save({"embeddings": torch.from_numpy(z), "labels": torch.from_numpy(labels)}, path)
    return path


def test_every_format_gives_reference_rankme(deployment, tmp_path):
    client = repscope.Client(deployment.url)
    run = client.run(project="e2e", name=f"formats-{deployment.name}", config={"lr": 0.3})
    expected = {}
    for step, fmt in enumerate(["npy", "npz", "safetensors", "pt"], start=1):
        z = structured_embeddings(600, 48, seed=step)
        labels = np.arange(600, dtype=np.int64) % 10
        run.log_file(write_format(tmp_path / f"z{step}.{fmt}", fmt, z, labels), step=step * 100, dataset="val")
        expected[step * 100] = rankme_numpy(z)
    z = structured_embeddings(500, 32, seed=9, decay=0.8)
    run.log_embeddings(step=500, embeddings=z, labels=np.arange(500) % 5, dataset="val")
    expected[500] = rankme_numpy(z)
    try:
        finished = run.wait(timeout=180)
    except Exception:
        print(deployment.logs())
        raise
    assert all(e.status == "succeeded" for e in finished)
    got = dict(run.metrics("rankme"))
    assert sorted(got) == sorted(expected)
    for step, value in expected.items():
        assert abs(got[step] - value) / value < REL_TOL, (step, got[step], value)
    evaluation = client.evaluation(finished[0].id)
    assert len(evaluation.result["figures"]["singular_values"]) == 48
    assert evaluation.attempts == 1
    for page in ("/", "/projects/e2e", f"/runs/{run.id}", f"/evaluations/{finished[0].id}"):
        assert client.http.get(f"{deployment.url}{page}").status_code == 200


def test_bad_file_gets_4xx_and_server_keeps_serving(deployment, tmp_path):
    client = repscope.Client(deployment.url)
    run = client.run(project="e2e", name=f"bad-{deployment.name}")
    bad = np.ones((10, 4), dtype=np.float32)
    bad[3, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(RepscopeError) as err:
        run.log_file(tmp_path / "bad.npy", step=1).result()  # the background upload's error, handed back
    assert err.value.status_code == 422 and "finite" in err.value.detail
    z = structured_embeddings(100, 16, seed=3)
    good = client.run(project="e2e", name=f"bad-then-good-{deployment.name}")
    good.log_embeddings(step=2, embeddings=z)
    good.wait(timeout=120)
    run = good
    assert abs(run.metrics("rankme")[0][1] - rankme_numpy(z)) / rankme_numpy(z) < REL_TOL


def test_serve_stops_worker_and_api_on_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "data", url)
    serve = start_serve(env, port, tmp_path / "data", tmp_path)
    wait_healthy(url, serve.proc, timeout=90)
    children = _children(serve.proc.pid)
    assert children, "repscope serve started no worker subprocess"
    serve.proc.send_signal(signal.SIGINT)
    rc = serve.proc.wait(timeout=30)
    print(serve.log_tail())
    assert rc == 0
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in children), "worker outlived repscope serve"


def _children(pid: int) -> list[int]:
    from pathlib import Path

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(c) for c in text]
        if found:
            return found
        time.sleep(0.2)
    return []


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sweeper_resends_what_redis_lost(make_postgres_database, tmp_path):
    """Redis loses the queue before any worker ran: the sweeper re-sends from the database, once."""
    services_or_skip()
    import redis

    from tests.integration.conftest import REDIS_URL

    dep = cluster_deployment(tmp_path, make_postgres_database(), with_worker=False)
    try:
        client = repscope.Client(dep.url)
        run = client.run(project="faults", name="redis-lost")
        z = structured_embeddings(300, 24, seed=5)
        ids = run.log_embeddings(step=1, embeddings=z).ids()  # wait for the upload itself
        r = redis.Redis.from_url(REDIS_URL)
        lost = [k for k in r.scan_iter(match=f"{dep.queue}*")]
        assert lost, "the upload did not reach Redis"
        r.delete(*lost)  # as if Redis restarted without persistence
        dep.procs.append(start_worker(dep.env, dep.queue, tmp_path))
        finished = client.wait(ids, timeout=120)
        assert finished[0].status == "succeeded" and finished[0].attempts == 1
        assert abs(run.metrics("rankme")[0][1] - rankme_numpy(z)) / rankme_numpy(z) < REL_TOL
    except Exception:
        print(dep.logs())
        raise
    finally:
        for proc in reversed(dep.procs):
            proc.stop()


def test_cli_upload_waits_and_reports(deployment, tmp_path):
    import json
    import subprocess
    import sys

    z = structured_embeddings(256, 16, seed=12)
    np.save(tmp_path / "z.npy", z)
    out = subprocess.run([sys.executable, "-m", "repscope.cli", "upload", str(tmp_path / "z.npy"), "--project",
                          "cli", "--run", f"upload-{deployment.name}", "--step", "7", "--wait", "--json",
                          "--url", deployment.url], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["upload"]["artifact"]["step"] == 7
    [evaluation] = body["evaluations"]
    assert abs(evaluation["metrics"]["rankme"] - rankme_numpy(z)) / rankme_numpy(z) < REL_TOL
    listed = subprocess.run([sys.executable, "-m", "repscope.cli", "runs", "--project", "cli", "--url",
                             deployment.url], capture_output=True, text=True, timeout=60)
    assert f"cli/upload-{deployment.name}" in listed.stdout
