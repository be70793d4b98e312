"""Self-hosted hygiene: API docs with no CDN, security headers on every response, private data-dir file modes.

(Plotly's send-to-cloud buttons and the CSP in a real browser: tests/browser/test_pages.py.)"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_HEADERS

REQUIRED = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "same-origin"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def directives(policy: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def assert_secure(response, *, no_store: bool = True) -> dict[str, list[str]]:
    for name, value in REQUIRED.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers)
    policy = directives(response.headers["content-security-policy"])
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["default-src"] == ["'self'"]
    if no_store:
        assert response.headers.get("cache-control") == "no-store", (response.url, response.headers)
    return policy


# --- /docs and /redoc offline ---------------------------------------------------------------------------------

@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api, page):
    response = api.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', response.text) + re.findall(r"url: '([^']+)'", response.text)
    urls += re.findall(r'spec-url="([^"]+)"', response.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in response.text and "https://" not in response.text  # no CDN, no Google fonts
    kinds = {}
    for url in urls:
        asset = api.get(url)
        assert asset.status_code == 200, url
        kinds[url.rsplit(".", 1)[-1]] = asset.headers["content-type"]
    assert "javascript" in kinds["js"] and len(api.get(next(u for u in urls if u.endswith(".js"))).content) > 100_000
    if page == "/docs":
        assert kinds["css"].startswith("text/css") and "json" in kinds["json"]
    # the page's own inline script (Swagger's start-up call) runs under a CSP that names exactly its hash
    policy = assert_secure(response)
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    expected = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline}
    assert set(policy["script-src"]) == {"'self'", *expected} and len(inline) == (1 if page == "/docs" else 0)


def test_openapi_no_longer_points_docs_at_a_cdn(app):
    assert app.docs_url is None and app.redoc_url is None  # FastAPI's CDN pages are off; ours are routes
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {"/docs", "/redoc", "/docs-assets"} <= paths


# --- headers on every response ----------------------------------------------------------------------------------

def test_security_headers_on_pages_api_static_and_errors(app, api):
    anonymous = TestClient(app)
    for response in (api.get("/"), api.get("/jobs"), anonymous.get("/login"), api.get("/admin/tokens"),
                     api.get("/api/v1/health"), api.get("/api/v1/runs"), api.get("/openapi.json"),
                     api.get("/api/v1/runs/999"), api.get("/runs/999"), api.get("/api/v1/runs?limit=0"),
                     anonymous.get("/api/v1/runs"), anonymous.get("/jobs", follow_redirects=False),
                     api.post("/api/v1/runs", json={"project": "p", "name": "n" * 10_000}),
                     api.post("/api/v1/tokens", json={"name": "bot", "scopes": ["read"]})):
        assert response.status_code in (200, 201, 303, 307, 401, 404, 422), (response.url, response.status_code)
        assert_secure(response)
    style = api.get("/static/style.css")
    assert style.status_code == 200 and "cache-control" not in style.headers  # public asset: cacheable
    assert_secure(style, no_store=False)
    plotly = api.get("/static/vendor/plotly.min.js")
    assert plotly.headers["cache-control"] == "max-age=86400"  # a response's own Cache-Control is kept
    assert_secure(plotly, no_store=False)
    asset = api.get("/docs-assets/swagger-ui.css")
    assert asset.status_code == 200 and "cache-control" not in asset.headers
    missing = api.get("/static/nope.js")
    assert missing.status_code == 404
    assert_secure(missing, no_store=False)


def test_token_secret_responses_are_never_stored(app, api):
    created = api.post("/api/v1/tokens", json={"name": "ci-bot", "scopes": ["write"]})
    assert created.status_code == 201 and created.json()["token"].startswith("rs_")
    assert created.headers["cache-control"] == "no-store"
    whoami = api.get("/api/v1/whoami")
    assert whoami.status_code == 200 and whoami.headers["cache-control"] == "no-store"
    login = TestClient(app).get("/login")
    assert login.status_code == 200 and login.headers["cache-control"] == "no-store"


def test_unhandled_exception_is_a_500_with_the_headers(app):
    @app.get("/boom-for-test")
    def boom() -> None:
        raise RuntimeError("bug")

    response = TestClient(app, raise_server_exceptions=False, headers=ADMIN_HEADERS).get("/boom-for-test")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert_secure(response)


# --- file modes -----------------------------------------------------------------------------------------------------

def test_fresh_data_dir_is_private(tmp_path, settings):
    from backend.app import create_app

    settings = settings.model_copy(update={"data_dir": tmp_path / "fresh" / "data"})
    app = create_app(settings, run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        assert api.post("/api/v1/runs", json={"project": "p", "name": "r"}).status_code == 201
        data = settings.data_dir
        assert mode(data) == 0o700
        assert mode(data / "repscope.db") == 0o600 and mode(data / "secret_key") == 0o600
        side = [p for p in data.iterdir() if p.name.startswith("repscope.db-")]
        assert side and all(mode(p) == 0o600 for p in side)  # WAL / shared memory: the database's mode
    app.state.engine.dispose()


def test_existing_loose_modes_are_tightened_with_a_log_line(tmp_path, settings, caplog):
    from backend.app import create_app
    from backend.security import load_secret_key

    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    for name in ("repscope.db", "secret_key", "admin-token"):
        (data / name).write_text("" if name == "repscope.db" else "ab" * 32)
        (data / name).chmod(0o644)
    settings = settings.model_copy(update={"data_dir": data})
    with caplog.at_level(logging.WARNING, logger="backend.db"):
        app = create_app(settings, run_sweeper=False)
    assert mode(data) == 0o700
    assert {name: mode(data / name) for name in ("repscope.db", "secret_key", "admin-token")} == {
        "repscope.db": 0o600, "secret_key": 0o600, "admin-token": 0o600}
    logged = " ".join(r.getMessage() for r in caplog.records)
    for name in ("repscope.db", "secret_key", "admin-token"):
        assert f"{data / name} was mode 0644" in logged
    assert f"{data} was mode 0755" in logged
    assert load_secret_key(settings) == bytes.fromhex("ab" * 32)  # the existing key is kept
    app.state.engine.dispose()


def test_new_secret_key_is_private_from_its_first_byte(tmp_path, settings):
    from backend.security import load_secret_key

    settings = settings.model_copy(update={"data_dir": tmp_path / "k", "secret_key": None})
    key = load_secret_key(settings)
    assert len(key) == 32 and mode(tmp_path / "k" / "secret_key") == 0o600
    assert mode(tmp_path / "k") == 0o700 and [p.name for p in (tmp_path / "k").iterdir()] == ["secret_key"]


def test_serve_order_creates_the_database_private(tmp_path, settings, caplog):
    """`repscope serve` / `db upgrade`: secure_data_dir, then Alembic creates the tables in the 0600 file."""
    from backend import migrate
    from backend.db import secure_data_dir

    settings = settings.model_copy(update={"data_dir": tmp_path / "serve" / "data"})
    with caplog.at_level(logging.WARNING, logger="backend.db"):
        secure_data_dir(settings)
        migrate.upgrade(settings.resolved_database_url)
    db = settings.data_dir / "repscope.db"
    assert mode(settings.data_dir) == 0o700 and mode(db) == 0o600 and db.stat().st_size > 0
    assert not caplog.records  # a fresh start has nothing to tighten
