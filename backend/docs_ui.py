"""/docs (Swagger UI) and /redoc from the assets the `fastapi-offline` wheel ships: no CDN, works offline.

FastAPI's own /docs loads Swagger UI from a CDN (a blank page without the internet). The same HTML is built
here with FastAPI's get_swagger_ui_html / get_redoc_html, pointing at /docs-assets/ (a StaticFiles mount of
the package's static folder: the Swagger UI bundle and CSS, ReDoc's standalone bundle, a favicon). Swagger's
page starts with one inline script; its policy allows exactly that script by hash (backend.headers.csp).
ReDoc runs its search in a `blob:` worker (Chromium refuses it under `worker-src 'self'`, and the search then
finds nothing), so its page alone allows `worker-src blob:`. ReDoc's sidebar also asks a CDN
for a "by Redocly" logo; the policy refuses it and ReDoc hides the broken image.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend.headers import csp

ASSETS = "/docs-assets"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)  # a <script> without src: its text runs


def assets_dir() -> str:
    return str(resources.files("fastapi_offline") / "static")


def _with_policy(page: HTMLResponse, **policy: str) -> HTMLResponse:
    """The page with a CSP that allows its own inline scripts (by sha256) and nothing else inline."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(page.body.decode()))
    page.headers["Content-Security-Policy"] = csp(script_src=f"'self' {hashes}".strip(), **policy)
    return page


def install(app: FastAPI) -> None:
    """Mount the assets and add GET /docs and /redoc (create the app with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png", oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · API reference",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False), worker_src="'self' blob:")
