"""Trickled bodies against a live uvicorn (issue 16, finding 9 follow-up): a byte just inside every idle timeout
kept a JSON body open for 250 s and counting, and would have held an upload's temp file as long. Now a JSON body
must arrive whole within the idle timeout, and an upload or a worker's result must keep up a minimum average rate
(checked once per idle-timeout window): 408, nothing stored, temp file gone.
"""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_HEADERS, WORKER_TOKEN
from tests.integration.procs import base_env, free_port, start_api, wait_healthy
from tests.integration.test_stall_live import BOUNDARY, multipart_head, request_head

pytestmark = pytest.mark.integration
IDLE_S = 2.0
MIN_RATE = 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trickle")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp / "data", url, REPSCOPE_UPLOAD_IDLE_TIMEOUT_S=str(IDLE_S),
                   REPSCOPE_UPLOAD_MIN_BYTES_PER_S=str(MIN_RATE))
    api = start_api(env, port, tmp)
    try:
        wait_healthy(url, api.proc, timeout=60)
        with httpx.Client(base_url=url, headers=ADMIN_HEADERS) as http:
            yield http, port, tmp / "data"
    finally:
        api.stop()
        print(api.log_tail(30))


def trickle(port: int, head: bytes, body: bytes, every_s: float = IDLE_S / 2) -> tuple[bytes, float, int]:
    """Send `head`, then `body` one byte per `every_s` until the server answers: (reply, seconds, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        started, sent, reply = time.monotonic(), 0, b""
        sock.settimeout(every_s)
        while sent < len(body) and not reply:
            try:
                sock.sendall(body[sent:sent + 1])
                sent += 1
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # the server closed first
                break
        sock.settimeout(10)
        while reply and not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply, time.monotonic() - started, sent


def npy(rows: int, d: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(rows).standard_normal((rows, d)).astype(np.float32))
    return buf.getvalue()


def test_trickled_json_body_must_arrive_whole_within_the_idle_timeout(live):
    http, port, _ = live
    body = b'{"project": "trickle", "name": "json-body-sent-a-byte-a-second"}'
    reply, waited, sent = trickle(port, request_head("POST", "/api/v1/runs", "application/json", len(body)), body)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request body too slow: a JSON body must arrive whole within 2 s" in reply, reply
    assert IDLE_S - 0.5 <= waited < IDLE_S + 3 and sent < len(body) / 4, (waited, sent)
    assert http.get("/api/v1/runs", params={"project": "trickle"}).json()["total"] == 0


def test_trickled_upload_is_cut_by_its_average_rate(live):
    http, port, data_dir = live
    run_id = http.post("/api/v1/runs", json={"project": "trickle", "name": "upload"}).json()["id"]
    head = request_head("POST", f"/api/v1/runs/{run_id}/artifacts", f"multipart/form-data; boundary={BOUNDARY}",
                        len(multipart_head()) + 1_000)
    reply, waited, sent = trickle(port, head, multipart_head() + b"\x93NUMPY" + bytes(994))
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"upload too slow: " in reply and b"under the minimum of 1024 bytes/s" in reply, reply
    # first checked at the end of the first window; one byte per IDLE_S / 2 never trips the idle timeout
    assert IDLE_S - 0.5 <= waited < 2 * IDLE_S + 3, waited
    assert http.get(f"/api/v1/runs/{run_id}/artifacts").json() == []
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []


def test_trickled_result_is_cut_and_not_stored(live):
    http, port, _ = live
    run_id = http.post("/api/v1/runs", json={"project": "trickle", "name": "result"}).json()["id"]
    up = http.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1", "suites": "spectrum"},
                   files={"file": ("e.npy", npy(30, 4))})
    assert up.status_code == 202, up.text
    eid = up.json()["evaluations"][0]["id"]
    worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    claim = http.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w"}, headers=worker).json()["claim"]
    body = f'{{"claim": "{claim}", "metrics": {{"rankme": 1.0}}, "figures": {{"pad": "{"x" * 4000}"}}}}'.encode()
    head = request_head("POST", f"/api/v1/evaluations/{eid}/result", "application/json", len(body))
    head = head.replace(ADMIN_HEADERS["Authorization"].encode(), worker["Authorization"].encode())
    reply, waited, _ = trickle(port, head, body)
    assert reply.startswith(b"HTTP/1.1 408") and b"upload too slow: " in reply, reply[:300]
    assert waited < 2 * IDLE_S + 3, waited
    view = http.get(f"/api/v1/evaluations/{eid}").json()
    assert view["status"] == "running" and view["metrics"] == {}


def test_steady_upload_above_the_rate_goes_through(live):
    """About 4 KiB/s, in pieces half an idle timeout apart, for twice the window: accepted whole."""
    http, port, data_dir = live
    run_id = http.post("/api/v1/runs", json={"project": "trickle", "name": "steady"}).json()["id"]
    body = multipart_head() + npy(64, 64) + f"\r\n--{BOUNDARY}--\r\n".encode()
    size = len(body) // 8 + 1
    head = request_head("POST", f"/api/v1/runs/{run_id}/artifacts", f"multipart/form-data; boundary={BOUNDARY}",
                        len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(body), size):
            sock.sendall(body[i:i + size])
            time.sleep(IDLE_S / 2)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 202"), reply[:300]
    [artifact] = http.get(f"/api/v1/runs/{run_id}/artifacts").json()
    assert (artifact["meta"]["n"], artifact["meta"]["d"]) == (64, 64)
    assert list((data_dir / "artifacts" / "tmp").iterdir()) == []
