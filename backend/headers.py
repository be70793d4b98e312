"""Security headers on every response: pages, API, static files, errors (an unhandled exception included).

- Content-Security-Policy: scripts, styles, fonts and fetches from this origin only; no inline script, no
  eval, no plugins, no framing (`frame-ancestors 'none'`), forms post only here. Checked in Chromium
  by tests/browser (no violation on any page): the templates have no inline script or style, and Plotly draws
  every trace type backend.figures uses without eval. With `style-src 'self'` Chromium refuses the `<style>`
  element Plotly fills with its modebar rules and its inline style attributes (the modebar loses its layout),
  so styles allow 'unsafe-inline' — an inline style can restyle a page, not run code. Images may be `data:` /
  `blob:` URLs (Plotly's heatmaps, image traces and PNG export). A response that brings its own policy keeps
  it (the /docs and /redoc pages, backend.docs_ui, which hash their one inline script).
- X-Frame-Options: DENY (older browsers' frame-ancestors), X-Content-Type-Options: nosniff (an uploaded file
  served back is never sniffed into HTML or script), Referrer-Policy: same-origin (run and project names in
  URLs do not leak to other sites).
- Cache-Control: no-store on everything but the public assets (/static, the API docs' assets). Every page and
  API answer is per-caller (read behind a token) or carries a secret outright: the token page showing a fresh
  secret, the login page and its CSRF cookie, POST /api/v1/tokens, /whoami; run results change while the user
  watches. Storing any of them in a shared proxy or on the browser's disk is a leak and never a speed-up
  worth it. The assets are the same for everyone and never secret. A response that sets its own
  Cache-Control (Plotly.js: a day) keeps it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import MutableHeaders

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

PUBLIC_ASSET_PREFIXES = ("/static/", "/docs-assets/")


def csp(script_src: str = "'self'", style_src: str = "'self' 'unsafe-inline'", worker_src: str = "'self'") -> str:
    """The policy; the docs pages add their inline script's hash (and ReDoc its blob: worker)."""
    return "; ".join((
        "default-src 'self'", f"script-src {script_src}", f"style-src {style_src}", "img-src 'self' data: blob:",
        "font-src 'self'", "connect-src 'self'", f"worker-src {worker_src}", "object-src 'none'",
        "base-uri 'self'", "form-action 'self'", "frame-ancestors 'none'"))


CONTENT_SECURITY_POLICY = csp()
HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)


def headers_for(path: str) -> list[tuple[str, str]]:
    """The headers a response to `path` gets (each only where the response has not set it itself)."""
    out = list(HEADERS)
    if not path.startswith(PUBLIC_ASSET_PREFIXES):
        out.append(("Cache-Control", "no-store"))
    return out


class SecurityHeadersMiddleware:
    """Pure ASGI (streamed bodies pass through untouched). Register it last so it is the outermost of the app's
    own middleware; an exception that escapes the app before a response started is answered here with a plain
    500 carrying the headers (Starlette's ServerErrorMiddleware, outside every user middleware, then only
    logs it)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = headers_for(scope.get("path", ""))
        started = False

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:
                await send_with_headers({"type": "http.response.start", "status": 500,
                                         "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send_with_headers({"type": "http.response.body", "body": b"Internal Server Error"})
            raise
