"""Issue 16, finding 1, end to end on a live `repscope serve` started the way a user starts it (no tokens
configured, so the first admin token is written to DATA_DIR/admin-token): a write token uploads TorchScript
checkpoints that read that file with from_file, in forward and in __setstate__. The embed step fails with the
operator named, no derived artifact exists, and the admin token is in nothing anyone can download."""

from __future__ import annotations

import httpx
import pytest
import torch

import repscope
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.unit.test_ts_vetting import Net, in_forward, in_setstate, rewrite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sandbox-live")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp / "data", url)
    env.pop("REPSCOPE_ADMIN_TOKEN")
    env.pop("REPSCOPE_WORKER_TOKEN")
    serve = start_serve(env, port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        admin = (tmp / "data" / "admin-token").read_text().strip()
        made = httpx.post(f"{url}/api/v1/tokens", json={"name": "trainer", "scopes": ["write"]},
                          headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert made.status_code in (200, 201), made.text
        yield url, tmp / "data", admin, made.json()["token"], serve
    finally:
        serve.stop()
        print(serve.log_tail())


def downloadable(client: repscope.Client, run_id: int) -> list[tuple[dict, bytes]]:
    return [(a, client.http.get(f"/artifacts/{a['id']}/file").content)
            for a in client.http.get(f"/runs/{run_id}/artifacts").json()]


@pytest.mark.parametrize("where", ["forward", "__setstate__"])
def test_checkpoint_reading_the_admin_token_fails_and_leaks_nothing(instance, tmp_path, where):
    url, data_dir, admin, write, serve = instance
    token_file = data_dir / "admin-token"
    read = f'torch.from_file("{token_file}", False, {len(admin)}, dtype=0)'
    base = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net()), base)
    evil = rewrite(base, tmp_path / "evil.pt", in_forward(read) if where == "forward" else in_setstate(read))
    client = repscope.Client(url, token=write)
    run = client.run(project="attack", name=f"from-file-{where.strip('_')}")
    accepted = client.upload_file(run.id, evil, step=1, kind="checkpoint", dataset="digits")
    [ev] = client.wait([e.id for e in accepted.evaluations], timeout=240, raise_on_failure=False)
    assert ev.status == "failed", serve.log_tail()
    method = "Net.forward" if where == "forward" else "Leaf.__setstate__"
    assert "aten::from_file" in ev.error and method in ev.error, ev.error
    files = downloadable(client, run.id)
    assert [a["kind"] for a, _ in files] == ["checkpoint"]  # no derived embeddings
    assert not any(admin.encode() in content for _, content in files)
    assert admin not in ev.error and admin not in str(ev.result)
    me = httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {write}"}).json()
    assert me["name"] == "trainer" and "admin" not in me["scopes"]


def test_a_legitimate_checkpoint_runs_sandboxed(instance, tmp_path):
    url, _, admin, write, serve = instance
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net()), path)
    client = repscope.Client(url, token=write)
    run = client.run(project="attack", name="legit")
    accepted = client.upload_file(run.id, path, step=1, kind="checkpoint", dataset="digits", suites=["spectrum"])
    [ev] = client.wait([e.id for e in accepted.evaluations], timeout=240, raise_on_failure=False)
    assert ev.status == "succeeded", ev.error or serve.log_tail()
    assert ev.result["variant"]["sandbox"] == "bwrap"
    assert not any(admin.encode() in content for _, content in downloadable(client, run.id))
