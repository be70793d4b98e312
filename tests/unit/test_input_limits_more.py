"""Input limits, red-team follow-ups to issue 16 finding 9: JSON in another encoding, NUL characters, and what
the 422 handler echoes back.

Before the fix: a UTF-16 body with a lone surrogate answered 500 (and, as a worker's result, was stored and
made GET /evaluations/{id} a 500 for good); NULs were a 500 on PostgreSQL wherever they reached a query, and
were stored on SQLite. Each test asserts status, message and that nothing was stored, on both databases where
the database matters.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from backend.limits import check_json_bytes, nul_escape
from backend.models import ApiToken, Artifact, Dataset, Evaluation, Metric, Run
from tests.conftest import WORKER_TOKEN
from tests.unit.test_api import count, stored_files, tmp_files
from tests.unit.test_input_limits import db_app  # noqa: F401 - the sqlite / postgresql fixture

JSON = {"content-type": "application/json"}
WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
SURROGATE_RUN = '{"project": "p", "name": "x\\ud800"}'  # a real JSON escape of a lone surrogate


def npy(rows: int = 30, d: int = 4) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(rows).standard_normal((rows, d)).astype(np.float32))
    return buf.getvalue()


def multipart(fields: dict[str, bytes], filename: bytes = b"e.npy", content: bytes = b"",
              boundary: str = "xxNULxx") -> tuple[bytes, dict[str, str]]:
    """A multipart body written byte for byte: httpx would percent-escape a NUL in a file name."""
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode() + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + content + f"\r\n--{boundary}--\r\n".encode())
    return out, {"content-type": f"multipart/form-data; boundary={boundary}"}


# ---- JSON must be UTF-8 (RFC 8259 §8.1) ------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-32",
                                      "utf-8-sig"])
def test_json_in_another_encoding_is_a_400(api, app, settings, encoding):
    body = SURROGATE_RUN.encode(encoding)
    assert json.loads(body)["name"] == "x\ud800"  # what the parser would have handed pydantic
    response = api.post("/api/v1/runs", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("JSON bodies must be UTF-8 (RFC 8259 §8.1)"), detail
    if encoding.endswith(("-le", "-be")):  # no BOM: told apart by its NUL bytes
        assert f"looks like {encoding.upper()}" in detail, detail
    else:
        assert "without a byte order mark" in detail, detail
    assert count(app, Run) == 0
    plain = api.post("/api/v1/runs", content='{"project": "p", "name": "x"}'.encode(encoding), headers=JSON)
    assert plain.status_code == 400  # the encoding alone is refused, surrogate or not
    assert api.post("/api/v1/runs", content=b'{"project": "p", "name": "x"}', headers=JSON).status_code == 201


def test_content_types_fastapi_reads_as_json_are_all_checked(api, app):
    """FastAPI parses application/<anything>+json (and a body with no type) as JSON: the checks must too.
    `a_b+json` slipped past the old pattern and answered 500."""
    for content_type in ("application/a_b+json", "application/a!b+json", "Application/JSON ; charset=x"):
        response = api.post("/api/v1/runs", content=SURROGATE_RUN.encode(), headers={"content-type": content_type})
        assert response.status_code == 400 and "unpaired UTF-16 surrogate" in response.json()["detail"], content_type
    assert count(app, Run) == 0


def test_a_result_with_a_surrogate_is_refused_and_nothing_is_stored(api, app):
    """The worker-token variant: a UTF-16 result stored "\\ud800" in figures, then GET 500'd for every reader."""
    run_id = api.post("/api/v1/runs", json={"project": "p", "name": "r"}).json()["id"]
    up = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1", "suites": "spectrum"},
                  files={"file": ("e.npy", npy())})
    assert up.status_code == 202, up.text
    eid = up.json()["evaluations"][0]["id"]
    claim = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w1"}, headers=WORKER).json()["claim"]
    text = json.dumps({"claim": claim, "metrics": {"rankme": 1.0}, "figures": {"x": "SURR"},
                       "variant": {"SURR": 1}}).replace("SURR", "\\ud800")
    for body, expected in ((text.encode("utf-16-le"), "JSON bodies must be UTF-8"),
                           (text.encode(), "unpaired UTF-16 surrogate")):
        refused = api.post(f"/api/v1/evaluations/{eid}/result", content=body, headers=JSON | WORKER)
        assert refused.status_code == 400 and expected in refused.json()["detail"], refused.text
    view = api.get(f"/api/v1/evaluations/{eid}")
    assert view.status_code == 200 and view.json()["status"] == "running" and view.json()["metrics"] == {}
    assert count(app, Metric) == 0
    with app.state.sessionmaker() as session:
        assert session.get(Evaluation, eid).result in (None, {})
    ok = api.post(f"/api/v1/evaluations/{eid}/result", headers=JSON | WORKER, content=json.dumps(
        {"claim": claim, "metrics": {"rankme": 1.0}, "figures": {"x": "\U0001f600"}}).encode())  # as \ud83d\ude00
    assert ok.status_code == 200 and ok.json()["result"]["figures"]["x"] == "\U0001f600"
    assert api.get(f"/api/v1/evaluations/{eid}").status_code == 200


def test_the_422_handler_echoes_only_what_it_can_encode(app, api, run_id):
    """A NaN in `input` made the handler itself raise (strict JSON); so did a lone surrogate."""
    nan = api.post(f"/api/v1/runs/{run_id}/metrics", content=b'{"step": NaN, "metrics": {"a": 1}}', headers=JSON)
    assert nan.status_code == 422, nan.text
    assert nan.json()["detail"] == "body.step: Input should be a finite number"
    assert nan.json()["errors"][0]["input"] == "nan"
    handler = app.exception_handlers[RequestValidationError]
    exc = RequestValidationError([{"type": "string_type", "loc": ("body", "k\udc00"), "msg": "bad \ud800",
                                   "input": ["x\ud800", {"y\udfff": float("inf")}, 3]}])
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""})
    response = asyncio.run(handler(request, exc))
    assert response.status_code == 422
    body = json.loads(response.body.decode("utf-8"))
    assert body["detail"] == "body.k\\udc00: bad \\ud800"
    assert body["errors"] == [{"type": "string_type", "loc": ["body", "k\\udc00"], "msg": "bad \\ud800",
                               "input": ["x\\ud800", {"y\\udfff": "inf"}, 3]}]


# ---- NUL characters (500 on PostgreSQL, stored on SQLite) ------------------------------------------------

NUL_JSON = [
    {"project": "p", "name": "a\u0000b"}, {"project": "p\u0000", "name": "a"},
    {"project": "p", "name": "t", "tags": ["x\u0000"]}, {"project": "p", "name": "c", "config": {"a": "x\u0000"}},
    {"project": "p", "name": "c2", "config": {"a\u0000": 1}},
]
NUL_URLS = ["/api/v1/runs?q=%00", "/api/v1/runs?project=%00", "/api/v1/runs?tag=%00", "/projects/%00",
            "/leaderboards/%00", "/api/v1/datasets/%00", "/api/v1/leaderboards/%00", "/api/v1/runs/1/metrics?key=%00",
            "/api/v1/evaluations?suite=%00", "/projects/p?q=a%00b"]


def test_nul_in_json_urls_and_forms_is_refused_and_nothing_is_stored(db_app):  # noqa: F811
    app, api = db_app
    for body in NUL_JSON:
        response = api.post("/api/v1/runs", json=body)
        assert response.status_code == 400, (body, response.text)
        assert "NUL character (\\u0000) at byte" in response.json()["detail"]
    raw_body = b'{"project": "p", "name": "a\x00"}'
    raw = api.post("/api/v1/runs", content=raw_body, headers=JSON)
    assert raw.status_code == 400 and f"raw NUL byte at byte {len(raw_body) - 3}" in raw.json()["detail"]
    token = api.post("/api/v1/tokens", json={"name": "a\u0000", "scopes": ["read"]})
    assert token.status_code == 400
    assert count(app, Run) == 0 and count(app, ApiToken) == 2  # the bootstrap admin and worker only
    run_id = api.post("/api/v1/runs", json={"project": "p", "name": "ok"}).json()["id"]
    metric = api.post(f"/api/v1/runs/{run_id}/metrics", json={"step": 1, "metrics": {"a\u0000": 1.0}})
    assert metric.status_code == 400 and "NUL" in metric.json()["detail"]
    for url in NUL_URLS:
        response = api.get(url)
        assert response.status_code == 400, (url, response.text)
        assert "contains a NUL character (%00)" in response.json()["detail"], url
    login = api.post("/login", content=b"token=%00&login_csrf=a", headers={
        "content-type": "application/x-www-form-urlencoded", "cookie": "repscope_login_csrf=a"})
    assert login.status_code == 400 and "form body contains a NUL" in login.json()["detail"]
    literal = api.post("/api/v1/runs", content=b'{"project": "p", "name": "back\\\\u0000"}', headers=JSON)
    assert literal.status_code == 201 and literal.json()["name"] == "back\\u0000"  # an escaped backslash
    assert count(app, Run) == 2
    assert api.get("/api/v1/runs", params={"q": "ok"}).json()["total"] == 1  # still serving


def test_nul_in_multipart_fields_and_file_names_is_a_422(db_app):  # noqa: F811
    app, api = db_app
    settings = app.state.settings
    run_id = api.post("/api/v1/runs", json={"project": "p", "name": "r"}).json()["id"]
    cases = [({"dataset": b"d\x00"}, b"e.npy", "form field 'dataset' contains a NUL character"),
             ({"suites": b"spectrum\x00"}, b"e.npy", "form field 'suites' contains a NUL character"),
             ({"step": b"1"}, b"e\x00.npy", "the file name of 'file' contains a NUL character"),
             ({"st\x00ep": b"1"}, b"e.npy", "contains a NUL character")]
    for fields, filename, expected in cases:
        body, headers = multipart(fields, filename, npy())
        response = api.post(f"/api/v1/runs/{run_id}/artifacts", content=body, headers=headers)
        assert response.status_code == 422, (fields, filename, response.text)
        assert expected in response.json()["detail"]
    datasets = count(app, Dataset)
    body, headers = multipart({"name": b"ds\x00"}, b"d.npz", b"x")
    response = api.post("/api/v1/datasets", content=body, headers=headers)
    assert response.status_code == 422 and "form field 'name' contains a NUL" in response.json()["detail"]
    assert count(app, Dataset) == datasets
    assert count(app, Artifact) == count(app, Evaluation) == 0
    assert stored_files(settings) == [] and tmp_files(settings) == []
    body, headers = multipart({"step": b"1"}, b"e.npy", npy())  # the same upload without the NUL
    assert api.post(f"/api/v1/runs/{run_id}/artifacts", content=body, headers=headers).status_code == 202


def texts(value) -> list[str]:  # noqa: ANN001 - every key and string in a parsed JSON value
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (k, *texts(v))]
    return [t for v in value for t in texts(v)] if isinstance(value, list) else [value] * isinstance(value, str)


def test_nul_scan_reads_escapes_like_the_parser():
    for body in (b'{"a": "\\u0000"}', b'{"a": "\\\\\\u0000"}', b'{"\\u0000": 1}'):
        assert nul_escape(body) == body.index(b"\\u0000"), body
        assert any("\x00" in t for t in texts(json.loads(body)))  # the reference: the parser
    for body in (b'{"a": "\\\\u0000"}', b'{"a": "u0000"}', b'{"a": "\\u0001\\\\"}'):
        assert nul_escape(body) is None, body
        assert not any("\x00" in t for t in texts(json.loads(body))), body
    assert check_json_bytes(b'{"a": "\\\\u0000"}', 64) is None
