"""Auth on a live embedded instance started the way a user starts it: no tokens configured.

`repscope serve` creates the first admin token (kept in DATA_DIR/admin-token, mode 600) and a fresh worker token
for its worker; the admin makes a write token with `repscope token create --url`; a training job logs with
it and the worker (authenticated with its own token) evaluates; read-only and revoked tokens are refused
with clear errors, and a refused upload is answered before the body is read.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import numpy as np
import pytest

import repscope
from repscope.client import RepscopeError
from tests.integration.procs import ROOT, base_env, free_port, start_serve, wait_healthy
from tests.reference import rankme_numpy

pytestmark = pytest.mark.integration


def cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPSCOPE_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "repscope.cli", "token", *args, "--url", url], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def fresh_instance(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp / "data", url)
    env.pop("REPSCOPE_ADMIN_TOKEN")
    env.pop("REPSCOPE_WORKER_TOKEN")
    serve = start_serve(env, port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        yield url, tmp / "data", serve
    finally:
        serve.stop()
        print(serve.log_tail())


def test_first_start_creates_an_admin_token_and_the_worker_authenticates(fresh_instance):
    url, data_dir, serve = fresh_instance
    path = data_dir / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin = path.read_text().strip()
    assert "created the first admin token" in serve.log_path.read_text()
    assert httpx.get(f"{url}/api/v1/runs").status_code == 401

    made = cli(url, admin, "create", "trainer", "--scopes", "write")
    assert made.returncode == 0, made.stderr
    trainer = made.stdout.strip()
    assert trainer.startswith("rs_") and trainer != admin
    made = cli(url, admin, "create", "viewer", "--scopes", "read")
    viewer = made.stdout.strip()

    z = np.random.default_rng(3).standard_normal((300, 24)).astype(np.float32) * np.linspace(2, 0.1, 24)
    client = repscope.Client(url, token=trainer)
    run = client.run(project="auth", name="job")
    run.log_embeddings(step=10, embeddings=z, suites=["spectrum"])
    [done] = run.wait(timeout=180)
    assert done.status == "succeeded", done.error
    assert done.metrics["rankme"] == pytest.approx(rankme_numpy(z), rel=1e-6)
    names = {t["name"]: t["scopes"] for t in httpx.get(f"{url}/api/v1/tokens",
                                                        headers={"Authorization": f"Bearer {admin}"}).json()}
    assert names["admin"] == ["admin"] and names["bootstrap-worker"] == ["worker"]

    with pytest.raises(RepscopeError) as refused:
        repscope.Client(url, token=viewer).run(project="auth", name="other")
    assert refused.value.status_code == 403 and "write" in refused.value.detail
    assert repscope.Client(url, token=viewer).runs(project="auth")["total"] == 1

    # a refused upload is answered at once, before the 30 MB body is read; nothing is stored
    body = np.zeros((30 * 1024 * 1024 // 4 // 64, 64), dtype=np.float32)
    files_before = sorted(p for p in (data_dir / "artifacts").rglob("*") if p.is_file())
    response = httpx.post(f"{url}/api/v1/runs/{run.id}/artifacts", headers={"Authorization": f"Bearer {viewer}"},
                          files={"file": ("z.npy", body.tobytes(), "application/octet-stream")}, timeout=60)
    assert response.status_code == 403
    assert sorted(p for p in (data_dir / "artifacts").rglob("*") if p.is_file()) == files_before

    listed = cli(url, admin, "list")
    assert listed.returncode == 0 and "trainer" in listed.stdout and "viewer" in listed.stdout
    assert trainer not in listed.stdout
    assert cli(url, trainer, "list").returncode == 1  # not an admin
    revoked = cli(url, admin, "revoke", "trainer")
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(RepscopeError) as gone:
        repscope.Client(url, token=trainer).runs()
    assert gone.value.status_code == 401
