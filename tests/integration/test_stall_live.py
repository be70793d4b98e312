"""Input limits against real processes (issue 16, findings 7 and 9): bodies that stall mid-way get a 408 from a
live uvicorn and leave nothing behind; an .npz bomb that got past a lenient API is refused by the worker.

Before the fix a stalled upload held its temp file and connection open for as long as the client liked.
"""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import pytest

import repscope
from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN
from tests.integration.procs import base_env, free_port, start_api, start_worker, wait_healthy

pytestmark = pytest.mark.integration
IDLE_S = 2.0
BOUNDARY = "xxSTALLxx"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stall")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the steady upload below averages ~400 bytes/s: above this floor, under the 1024 default
    api = start_api(base_env(tmp / "data", url, REPSCOPE_UPLOAD_IDLE_TIMEOUT_S=str(IDLE_S),
                             REPSCOPE_UPLOAD_MIN_BYTES_PER_S="200"), port, tmp)
    try:
        wait_healthy(url, api.proc, timeout=60)
        yield url, port, tmp / "data"
    finally:
        api.stop()
        print(api.log_tail(30))


def multipart_head(field: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"step\"\r\n\r\n1\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"z.npy\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def request_head(method: str, path: str, content_type: str, length: int) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


def answer_after_stall(port: int, head: bytes, partial: bytes, timeout: float = 30.0) -> tuple[bytes, float]:
    """Send `head` + `partial` of a longer body, then nothing: (what the server answers, seconds until then)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + partial)
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply, time.monotonic() - started


def test_stalled_upload_is_a_408_and_leaves_nothing(live):
    url, port, data_dir = live
    client = repscope.Client(url)
    run = client.run(project="stall", name="upload", background=False)
    tmp_dir = data_dir / "artifacts" / "tmp"
    body = multipart_head() + b"\x93NUMPY" + bytes(1_000_000)  # a tenth of what Content-Length promises
    head = request_head("POST", f"/api/v1/runs/{run.id}/artifacts", f"multipart/form-data; boundary={BOUNDARY}",
                        10_000_000)
    reply, waited = answer_after_stall(port, head, body)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"upload stalled: no data arrived for 2 s" in reply
    assert IDLE_S <= waited < IDLE_S + 10
    assert list(tmp_dir.iterdir()) == []  # the partial file is gone
    with httpx.Client(base_url=url, headers=ADMIN_HEADERS) as http:
        assert http.get(f"/api/v1/runs/{run.id}/artifacts").json() == []
        assert http.get("/api/v1/health").status_code == 200


def test_stalled_json_body_is_a_408(live):
    url, port, _ = live
    reply, waited = answer_after_stall(port, request_head("POST", "/api/v1/runs", "application/json", 500),
                                       b'{"project": "stall", "name": ')
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request body stalled: nothing arrived for 2 s" in reply and waited < IDLE_S + 10
    with httpx.Client(base_url=url, headers=ADMIN_HEADERS) as http:
        assert http.get("/api/v1/runs", params={"project": "stall"}).json()["total"] <= 1  # the other test's run


def test_slow_but_steady_upload_is_not_cut_off(live):
    """The timeout is on silence, not on the whole body: a chunk every IDLE_S / 2 for 3 x IDLE_S goes through."""
    url, port, data_dir = live
    client = repscope.Client(url)
    run = client.run(project="stall", name="steady", background=False)
    buf = io.BytesIO()
    z = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.save(buf, z)
    body = multipart_head() + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()
    pieces = [body[i:i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]
    head = request_head("POST", f"/api/v1/runs/{run.id}/artifacts", f"multipart/form-data; boundary={BOUNDARY}",
                        len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for piece in pieces:
            time.sleep(IDLE_S / 2)
            sock.sendall(piece)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 202"), reply[:300]
    [artifact] = httpx.get(f"{url}/api/v1/runs/{run.id}/artifacts", headers=ADMIN_HEADERS).json()
    assert artifact["meta"]["n"] == 64 and artifact["meta"]["d"] == 8
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []


def test_worker_refuses_an_npz_bomb_the_api_let_through(tmp_path):
    """Defence in depth: an API configured to allow any ratio stores the bomb; the worker, on the default ratio
    with the per-member floor lowered, fails the evaluation with a message naming the member and its ratio."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "data", url)
    api = start_api({**env, "REPSCOPE_MAX_ZIP_RATIO": "1000000000"}, port, tmp_path)
    worker = None
    try:
        wait_healthy(url, api.proc, timeout=60)
        worker = start_worker({**env, "REPSCOPE_ZIP_RATIO_MIN_BYTES": str(1 << 20)}, "repscope", tmp_path)
        client = repscope.Client(url)
        run = client.run(project="bomb", name="worker", background=False)
        path = tmp_path / "bomb.npz"
        np.savez_compressed(path, embeddings=np.zeros((40_000, 64), np.float32))  # 10 MB of zeros in ~10 kB
        accepted = client.upload_file(run.id, path, step=1, suites=["spectrum"])
        [done] = client.wait([e.id for e in accepted.evaluations], timeout=180, raise_on_failure=False)
        assert done.status == "failed", done
        assert "'embeddings.npy' expands" in (done.error or "") and "at most 200x" in done.error
    except Exception:
        print(api.log_tail(), worker.log_tail() if worker else "")
        raise
    finally:
        if worker:
            worker.stop()
        api.stop()
