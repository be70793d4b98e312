"""Auth on the real app: token scopes, hashed storage, browser sessions with CSRF, public reads, rate limits,
request-body limits, and the `repscope token` command on the database."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.models import ApiToken
from tests.conftest import ADMIN_HEADERS, WORKER_TOKEN


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def make_token(api, name: str, *scopes: str) -> str:
    response = api.post("/api/v1/tokens", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def npy_bytes(n: int = 64, d: int = 8) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((n, d)).astype(np.float32))
    return buf.getvalue()


def upload(client, run_id: int, headers: dict | None = None):  # noqa: ANN001, ANN201
    return client.post(f"/api/v1/runs/{run_id}/artifacts", headers=headers or {},
                       files={"file": ("z.npy", npy_bytes(), "application/octet-stream")},
                       data={"step": "1", "suites": "spectrum"})


@pytest.fixture
def anon(app, api):  # noqa: ARG001 - `api` starts the app (lifespan: migrations, bootstrap tokens)
    return TestClient(app)


# ---- tokens and scopes ------------------------------------------------------------------------------------
def test_every_api_route_but_health_needs_a_token(api, anon, run_id):
    assert anon.get("/api/v1/health").status_code == 200
    for path in ("/api/v1/runs", f"/api/v1/runs/{run_id}", "/api/v1/projects", "/api/v1/evaluations",
                 "/api/v1/datasets", "/api/v1/leaderboards", "/api/v1/tokens"):
        response = anon.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert anon.post("/api/v1/runs", json={"project": "p", "name": "r"}).status_code == 401
    assert anon.get("/api/v1/runs", headers=bearer("rs_not-a-token")).status_code == 401
    assert anon.get("/api/v1/runs", headers={"Authorization": "Basic abc"}).status_code == 401


def test_scopes_grant_what_they_say(api, anon, run_id):
    read, write, worker = make_token(api, "r", "read"), make_token(api, "w", "write"), WORKER_TOKEN
    assert anon.get("/api/v1/runs", headers=bearer(read)).status_code == 200
    refused = anon.post("/api/v1/runs", json={"project": "p", "name": "x"}, headers=bearer(read))
    assert refused.status_code == 403 and "write" in refused.json()["detail"]
    assert upload(anon, run_id, bearer(read)).status_code == 403
    assert anon.post("/api/v1/runs", json={"project": "p", "name": "x"}, headers=bearer(write)).status_code == 201
    accepted = upload(anon, run_id, bearer(write))
    assert accepted.status_code == 202
    eid = accepted.json()["evaluations"][0]["id"]
    # only workers (and admins) claim and report; a write token cannot forge results
    claim = {"worker": "w1@host"}
    assert anon.post(f"/api/v1/evaluations/{eid}/claim", json=claim, headers=bearer(write)).status_code == 403
    assert anon.post(f"/api/v1/evaluations/{eid}/result", json={"metrics": {"rankme": 1e9}},
                     headers=bearer(write)).status_code == 403
    assert anon.post(f"/api/v1/evaluations/{eid}/claim", json=claim, headers=bearer(worker)).status_code == 200
    # workers upload only an embed step's derived embeddings (tests/unit/test_trust_uploads.py), never plain
    # files; nor do they administer tokens or create runs
    plain = upload(anon, run_id, bearer(worker))
    assert plain.status_code == 403 and "lacks the write scope" in plain.json()["detail"]
    assert anon.get("/api/v1/tokens", headers=bearer(worker)).status_code == 403
    assert anon.post("/api/v1/runs", json={"project": "p", "name": "y"}, headers=bearer(worker)).status_code == 403
    assert anon.get("/api/v1/tokens", headers=bearer(write)).status_code == 403


def test_refused_upload_leaves_nothing(api, anon, run_id, settings):
    before = sorted(p.name for p in (settings.data_dir / "artifacts").rglob("*") if p.is_file())
    assert upload(anon, run_id).status_code == 401
    read = make_token(api, "reader", "read")
    assert upload(anon, run_id, bearer(read)).status_code == 403
    after = sorted(p.name for p in (settings.data_dir / "artifacts").rglob("*") if p.is_file())
    assert after == before
    assert api.get(f"/api/v1/runs/{run_id}/artifacts").json() == []


def test_secrets_are_stored_only_as_sha256(api, app):
    secret = make_token(api, "alice", "read", "write")
    assert re.fullmatch(r"rs_[A-Za-z0-9_-]{43}", secret)
    with app.state.sessionmaker() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "alice"))
        assert row.sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert row.scopes == ["read", "write"]
        stored = json.dumps([[c for c in (r.name, r.sha256, r.scopes)] for r in session.scalars(select(ApiToken))])
    assert secret not in stored
    listed = api.get("/api/v1/tokens").json()
    assert {t["name"] for t in listed} >= {"alice", "bootstrap-admin", "bootstrap-worker"}
    assert all("token" not in t and "sha256" not in t for t in listed)


def test_revoked_token_stops_at_once(api, anon):
    secret = make_token(api, "temp", "read")
    assert anon.get("/api/v1/runs", headers=bearer(secret)).status_code == 200
    tid = next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == "temp")
    assert api.delete(f"/api/v1/tokens/{tid}").status_code == 204
    assert anon.get("/api/v1/runs", headers=bearer(secret)).status_code == 401
    assert api.delete(f"/api/v1/tokens/{tid}").status_code == 404


def test_token_names_and_scopes_are_checked(api):
    assert api.post("/api/v1/tokens", json={"name": "x", "scopes": ["root"]}).status_code == 422
    assert api.post("/api/v1/tokens", json={"name": "x", "scopes": []}).status_code == 422
    assert api.post("/api/v1/tokens", json={"name": "../x", "scopes": ["read"]}).status_code == 422
    make_token(api, "dup", "read")
    assert api.post("/api/v1/tokens", json={"name": "dup", "scopes": ["read"]}).status_code == 409


def test_whoami_and_last_used(api, anon):
    secret = make_token(api, "bob", "write")
    me = anon.get("/api/v1/whoami", headers=bearer(secret)).json()
    assert me == {"name": "bob", "scopes": ["read", "write"], "via": "bearer"}
    assert anon.get("/api/v1/whoami").json()["via"] == "anonymous"
    bob = next(t for t in api.get("/api/v1/tokens").json() if t["name"] == "bob")
    assert bob["last_used"] is not None


def test_bootstrap_secret_rotates_the_named_token(app, api):
    from backend.app import bootstrap_tokens

    settings = app.state.settings.model_copy(update={"worker_token": "rs_rotated-worker-secret"})
    bootstrap_tokens(app.state.sessionmaker, settings)
    assert api.get("/api/v1/whoami", headers=bearer("rs_rotated-worker-secret")).json()["name"] == "bootstrap-worker"
    assert api.get("/api/v1/whoami", headers=bearer(WORKER_TOKEN)).status_code == 401


# ---- public reads -----------------------------------------------------------------------------------------
def test_public_read_opens_reads_not_writes(settings):
    from backend.app import create_app

    app = create_app(settings.model_copy(update={"public_read": True}), run_sweeper=False)
    with TestClient(app) as anon:
        assert anon.get("/api/v1/runs").status_code == 200
        assert anon.get("/").status_code == 200
        assert anon.post("/api/v1/runs", json={"project": "p", "name": "r"}).status_code == 401
        assert anon.get("/api/v1/tokens").status_code == 401


# ---- browser sessions -------------------------------------------------------------------------------------
def login(client: TestClient, secret: str, next_url: str = "/"):  # noqa: ANN201
    form = client.get(f"/login?next={next_url}")
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/login", data={"token": secret, "login_csrf": nonce, "next": next_url},
                       follow_redirects=False)


def test_pages_redirect_to_login_then_back(api, app):
    browser = TestClient(app)
    first = browser.get("/jobs?x=1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Fjobs%3Fx%3D1"
    secret = make_token(api, "carol", "read")
    response = login(browser, secret, "/jobs?x=1")
    assert response.status_code == 303 and response.headers["location"] == "/jobs?x=1"
    cookie = response.headers["set-cookie"]
    assert "repscope_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    page = browser.get("/jobs")
    assert page.status_code == 200 and "carol" in page.text and "Sign out" in page.text
    assert secret not in cookie


def test_login_refuses_bad_tokens_forged_forms_and_open_redirects(api, app):
    browser = TestClient(app)
    assert login(browser, "rs_wrong").status_code == 401
    forged = browser.post("/login", data={"token": make_token(api, "dave", "read"), "login_csrf": "guess"},
                          follow_redirects=False)
    assert forged.status_code == 403 and "repscope_session" not in forged.headers.get("set-cookie", "")
    secret = make_token(api, "erin", "read")
    for evil in ("//evil.example/x", "https://evil.example", "/\\evil.example"):
        assert login(TestClient(app), secret, evil).headers["location"] == "/"


def test_session_cookie_secure_over_https(api, app):
    browser = TestClient(app, base_url="https://testserver")
    response = login(browser, make_token(api, "frank", "read"))
    assert "Secure" in response.headers["set-cookie"]


def test_cookie_writes_need_the_csrf_token(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "gina", "write"))
    page = browser.get("/upload")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text).group(1)
    body = {"project": "p", "name": "from-browser"}
    assert browser.post("/api/v1/runs", json=body).status_code == 403
    assert browser.post("/api/v1/runs", json=body, headers={"X-CSRF-Token": "x" + csrf}).status_code == 403
    assert browser.post("/api/v1/runs", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert browser.get("/api/v1/runs").status_code == 200  # reads need no CSRF token


def test_tampered_or_revoked_sessions_are_refused(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "hank", "read"))
    good = browser.cookies.get("repscope_session")
    payload, sig = good.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig
    assert TestClient(app, cookies={"repscope_session": tampered}).get("/", follow_redirects=False).status_code == 303
    assert TestClient(app, cookies={"repscope_session": good}).get("/", follow_redirects=False).status_code == 200
    tid = next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == "hank")
    api.delete(f"/api/v1/tokens/{tid}")
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_logout_needs_csrf_and_clears_the_session(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "ivy", "read"))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/").text).group(1)
    assert browser.post("/logout", data={"csrf_token": "nope"}, follow_redirects=False).status_code == 403
    out = browser.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and 'repscope_session=""' in out.headers["set-cookie"]


def test_admin_page_creates_and_revokes_tokens(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "root", "admin"))
    page = browser.get("/admin/tokens")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.post("/admin/tokens", data={"name": "ci", "scopes": ["write"]}).status_code == 403  # no CSRF
    made = browser.post("/admin/tokens", data={"name": "ci", "scopes": ["read", "write"], "csrf_token": csrf})
    assert made.status_code == 201
    secret = re.search(r'<pre id="token-secret">([^<]+)</pre>', made.text).group(1)
    assert api.get("/api/v1/whoami", headers=bearer(secret)).json()["scopes"] == ["read", "write"]
    tid = next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == "ci")
    gone = browser.post(f"/admin/tokens/{tid}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
    assert gone.status_code == 303
    assert api.get("/api/v1/whoami", headers=bearer(secret)).status_code == 401
    reader = TestClient(app)
    login(reader, make_token(api, "plain", "read"))
    assert reader.get("/admin/tokens").status_code == 403


# ---- rate limits and body limits ----------------------------------------------------------------------------
def test_rate_limit_per_token(settings):
    from backend.app import create_app

    app = create_app(settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 5}),
                     run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        other = make_token(api, "other", "read")  # request 1 of the admin's burst
        codes = [api.get("/api/v1/runs").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        limited = api.get("/api/v1/runs")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "rate limit" in limited.json()["detail"]
        assert api.get("/api/v1/runs", headers=bearer(other)).status_code == 200  # buckets are per token
        assert [api.get("/api/v1/runs", headers=bearer(WORKER_TOKEN)).status_code for _ in range(10)] == [200] * 10


def test_oversized_json_is_refused_while_streaming(api, settings):
    big = {"project": "p", "name": "r", "config": {"blob": "x" * settings.max_json_bytes}}
    declared = api.post("/api/v1/runs", json=big)
    assert declared.status_code == 413 and str(settings.max_json_bytes) in declared.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"project": "p", "name": "r", "config": {"blob": "'
        for _ in range(settings.max_json_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    streamed = api.post("/api/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert api.get("/api/v1/runs").json()["total"] == 0  # nothing half-written
    assert api.post("/api/v1/runs", json={"project": "p", "name": "ok"}).status_code == 201


def test_worker_results_get_the_larger_limit(api, run_id):
    eid = upload(api, run_id).json()["evaluations"][0]["id"]
    worker = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    claimed = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w@h"}, headers=worker)
    assert claimed.status_code == 200
    figure = {"spectrum": {"sv": [1.0] * 300_000}}  # ~1.5 MB of figure data, over the 1 MiB JSON limit
    posted = api.post(f"/api/v1/evaluations/{eid}/result", headers=worker,
                      json={"claim": claimed.json()["claim"], "worker": "w@h", "metrics": {"rankme": 3.0},
                            "figures": figure})
    assert posted.status_code == 200, posted.text
    assert api.get(f"/api/v1/evaluations/{eid}").json()["metrics"]["rankme"] == 3.0


# ---- the CLI on the database ------------------------------------------------------------------------------------
def test_token_cli_on_the_database(tmp_path, monkeypatch, capsys):
    from repscope.cli import main

    monkeypatch.delenv("REPSCOPE_DATABASE_URL", raising=False)
    data = str(tmp_path / "d")
    monkeypatch.setenv("REPSCOPE_DATA_DIR", data)  # the command exports it; restored after the test
    assert main(["token", "create", "alice", "--scopes", "read,write", "--data-dir", data]) == 0
    secret = capsys.readouterr().out.strip()
    assert re.fullmatch(r"rs_[A-Za-z0-9_-]{43}", secret)
    assert main(["token", "create", "alice", "--data-dir", data]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["token", "create", "bob", "--scopes", "sudo", "--data-dir", data]) == 1
    assert "unknown scope" in capsys.readouterr().err
    assert main(["token", "list", "--json", "--data-dir", data]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["scopes"]) for r in rows] == [("alice", ["read", "write"])]
    assert main(["token", "revoke", "alice", "--data-dir", data]) == 0
    assert main(["token", "revoke", "alice", "--data-dir", data]) == 1
    capsys.readouterr()
    assert main(["token", "list", "--json", "--data-dir", data]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_openapi_declares_the_token_and_each_scope(anon):
    spec = anon.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearerToken"][
            "description"]}
    paths = spec["paths"]
    assert paths["/api/v1/runs"]["post"]["x-required-scope"] == "write"
    assert paths["/api/v1/runs"]["get"]["x-required-scope"] == "read"
    assert paths["/api/v1/evaluations/{evaluation_id}/claim"]["post"]["x-required-scope"] == "worker"
    assert paths["/api/v1/runs/{run_id}/artifacts"]["post"]["x-required-scope"] == "write or worker"
    assert paths["/api/v1/tokens"]["post"]["x-required-scope"] == "admin"
    assert paths["/api/v1/health"]["get"]["security"] == []
