"""Browser sessions are server-side rows named by a random id (issue 16, finding 2): a revoked token's cookie
never becomes another token's session, and logout, revocation and expiry end a session at once."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from backend.models import ApiToken, BrowserSession, utcnow
from tests.unit.test_auth import bearer, login, make_token


def _token_id(api, name: str) -> int:
    return next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == name)


def _sessions(app) -> list[BrowserSession]:
    with app.state.sessionmaker() as session:
        return list(session.scalars(select(BrowserSession)))


def _whoami(app, cookie: str) -> dict:
    return TestClient(app, cookies={"repscope_session": cookie}).get("/api/v1/whoami").json()


def test_revoked_tokens_cookie_stays_anonymous_when_a_new_token_gets_its_id(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "reader", "read"))
    cookie = browser.cookies.get("repscope_session")
    assert _whoami(app, cookie) == {"name": "reader", "scopes": ["read"], "via": "cookie"}
    old_id = _token_id(api, "reader")
    assert api.delete(f"/api/v1/tokens/{old_id}").status_code == 204
    admin_secret = make_token(api, "new-admin", "admin")
    assert _token_id(api, "new-admin") == old_id  # SQLite hands the id on: the finding's precondition holds
    assert _whoami(app, cookie)["via"] == "anonymous"
    assert TestClient(app, cookies={"repscope_session": cookie}).get("/admin/tokens",
                                                                     follow_redirects=False).status_code == 303
    assert _sessions(app) == []  # revocation deleted the row, it did not just orphan it
    assert api.get("/api/v1/whoami", headers=bearer(admin_secret)).json()["name"] == "new-admin"


def test_cookie_names_a_random_session_stored_only_as_its_hash(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "kim", "read"))
    cookie = browser.cookies.get("repscope_session")
    session_id = cookie.split(".")[0]
    [row] = _sessions(app)
    assert row.sha256 == hashlib.sha256(session_id.encode()).hexdigest()
    with app.state.sessionmaker() as session:
        stored = json.dumps([[str(v) for v in (r.sha256, r.csrf_secret, r.token_id)]
                             for r in session.scalars(select(BrowserSession))])
        token_id = session.scalar(select(ApiToken.id).where(ApiToken.name == "kim"))
    assert session_id not in stored and row.token_id == token_id
    second = TestClient(app)
    login(second, make_token(api, "kim2", "read"))
    assert second.cookies.get("repscope_session").split(".")[0] != session_id


def test_logout_ends_the_session_on_the_server(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "lee", "write"))
    cookie = browser.cookies.get("repscope_session")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/").text).group(1)
    assert browser.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert _sessions(app) == []
    replayed = TestClient(app, cookies={"repscope_session": cookie})  # a copy of the cookie taken before logout
    assert replayed.get("/", follow_redirects=False).status_code == 303
    assert replayed.get("/api/v1/whoami").json()["via"] == "anonymous"
    assert replayed.post("/api/v1/runs", json={"project": "p", "name": "r"},
                         headers={"X-CSRF-Token": csrf}).status_code == 401


def test_expired_sessions_are_refused_and_cleaned_up(api, app):
    first, second = TestClient(app), TestClient(app)
    login(first, make_token(api, "max", "read"))
    login(second, make_token(api, "ned", "read"))
    with app.state.sessionmaker() as session:
        session.execute(update(BrowserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert first.get("/", follow_redirects=False).status_code == 303  # refused, and its row deleted
    assert len(_sessions(app)) == 1
    login(TestClient(app), make_token(api, "oz", "read"))  # a login sweeps the other expired ones
    assert [s.token_id for s in _sessions(app)] == [_token_id(api, "oz")]
    assert second.get("/api/v1/whoami").json()["via"] == "anonymous"


def test_rotating_a_bootstrap_secret_signs_its_browsers_out(api, app):
    from backend.app import bootstrap_tokens
    from tests.conftest import WORKER_TOKEN

    browser = TestClient(app)
    login(browser, WORKER_TOKEN)
    assert browser.get("/api/v1/whoami").json()["name"] == "bootstrap-worker"
    bootstrap_tokens(app.state.sessionmaker, app.state.settings.model_copy(update={"worker_token": "rs_rotated-1"}))
    assert browser.get("/api/v1/whoami").json()["via"] == "anonymous"


# ---- non-ASCII secrets: hmac.compare_digest(str, str) raised TypeError, every page answered 500 ----------------
def _raw_client(app, **kwargs) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, **kwargs)


def test_a_non_ascii_session_cookie_is_anonymous_not_a_500(api, app):
    browser = TestClient(app)
    login(browser, make_token(api, "uma", "read"))
    good = browser.cookies.get("repscope_session")
    session_id, sig = good.split(".")
    # sent raw: Starlette decodes header bytes as latin-1, so b"\xc3\xa9" arrives as two non-ASCII characters
    for cookie in (b"abc.\xc3\xa9", b"\xc3\xa9.abc", f"{session_id}.{sig[:-1]}".encode() + b"\xe9",
                   session_id.encode() + b"\xc3\xa9." + sig.encode()):
        client = _raw_client(app, headers={"Cookie": b"repscope_session=" + cookie})
        assert client.get("/api/v1/whoami").json() == {"name": "anonymous", "scopes": [], "via": "anonymous"}
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"
        assert client.get("/login").status_code == 200
    assert _whoami(app, good)["name"] == "uma"  # the control: the real cookie still works


def test_a_non_ascii_login_csrf_is_a_403_form_expired(api, app):
    secret = make_token(api, "vic", "read")
    for sent, cookie in (("%C3%A9", b"abc"), ("abc", b"\xc3\xa9"), ("%C3%A9", b"\xc3\xa9")):
        client = _raw_client(app, headers={"Cookie": b"repscope_login_csrf=" + cookie})
        response = client.post("/login", content=f"token={secret}&login_csrf={sent}",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}, follow_redirects=False)
        assert response.status_code == 403 and "The form expired" in response.text
        assert "repscope_session" not in response.cookies
    assert _sessions(app) == []


def test_a_non_ascii_csrf_header_or_form_field_is_a_403(api, app):
    browser = _raw_client(app)
    login(browser, make_token(api, "wes", "write"))
    [row] = _sessions(app)
    runs_before = api.get("/api/v1/runs").json()
    for header in (b"\xe9", b"\xc3\xa9", "é".encode()):
        response = browser.post("/api/v1/runs", json={"project": "p", "name": "csrf"}, headers={"X-CSRF-Token": header})
        assert response.status_code == 403 and "CSRF token" in response.json()["detail"]
    assert api.get("/api/v1/runs").json() == runs_before  # nothing created
    logout = browser.post("/logout", content="csrf_token=%C3%A9",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert logout.status_code == 403 and "CSRF token" in logout.json()["detail"]
    assert [s.id for s in _sessions(app)] == [row.id]  # the session survives a forged logout
    assert browser.get("/api/v1/whoami").json()["name"] == "wes"
