"""Who is calling and what they may do: bearer tokens, browser sessions, CSRF, per-token rate limits.

- API clients send `Authorization: Bearer <token>`; the token's hash is looked up (services.tokens).
- The browser logs in once with a token (`/login`) and then carries a session cookie (HttpOnly, SameSite=Lax,
  Secure over https): a random, never-reused session id, HMAC-signed, of which the server stores only the sha256
  (services.tokens). Logout, revoking the token or rotating its secret deletes the session row: the very next
  request with that cookie is anonymous. Cookies never name a token id (ids can be reused after a revoke).
- Requests authenticated by the cookie that change state must carry the session's CSRF token (header
  `X-CSRF-Token` or form field `csrf_token`); bearer requests need none (no ambient credential).
- Writes always need a token; reads need one unless `public_read`. Missing credentials: 401; a token
  without the scope: 403; over the per-token rate: 429 with Retry-After.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from backend.services import tokens as token_service
from repscope.settings import Settings

SESSION_COOKIE = "repscope_session"
LOGIN_CSRF_COOKIE = "repscope_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """The caller: a token (by bearer header or session cookie) or anonymous."""

    token_id: int | None
    name: str
    scopes: frozenset[str]
    via: str  # "bearer" | "cookie" | "anonymous"
    csrf: str | None = None  # the session's CSRF token (cookie logins only)
    session_id: str | None = None  # the browser session's random id (cookie logins only)

    @property
    def authenticated(self) -> bool:
        return self.token_id is not None

    def has(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal(None, "anonymous", frozenset(), "anonymous")


# ---- secret key and session cookies ------------------------------------------------------------------------
def load_secret_key(settings: Settings) -> bytes:
    """REPSCOPE_SECRET_KEY, else a random key created once in data_dir/secret_key (mode 0600 from its first byte:
    written to a temp file opened 0600, then linked into place; an existing looser file is tightened)."""
    from backend.db import PRIVATE_DIR, PRIVATE_FILE, tighten

    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    path = Path(settings.data_dir) / "secret_key"
    try:
        key_hex = path.read_text().strip()
        tighten(path, PRIVATE_FILE)
        return bytes.fromhex(key_hex)
    except (FileNotFoundError, ValueError):
        pass
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, mode=PRIVATE_DIR, exist_ok=True)
    tmp = path.with_suffix(f".tmp{secrets.token_hex(4)}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "w") as fh:
        fh.write(key.hex())
    try:
        os.link(tmp, path)  # first writer wins when several processes start at once
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def same_secret(sent: str, expected: str) -> bool:
    """Constant-time equality of two secrets, compared as utf-8 bytes: `hmac.compare_digest` raises TypeError on
    non-ASCII str, and cookies, headers and form fields are the caller's text (any character, even a surrogate)."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def make_session_cookie(key: bytes, session_id: str) -> str:
    """The cookie for a server-side session: its random id, signed (a forged id is refused before any lookup)."""
    return f"{session_id}.{_sign(key, f'session:{session_id}')}"


def read_session_cookie(key: bytes, cookie: str) -> str | None:
    """The session id a cookie carries, or None when it is malformed (ours are ASCII) or its signature is wrong:
    either way the caller is anonymous. Expiry is the server row's."""
    session_id, _, sig = cookie.partition(".")
    if not session_id or not sig or not cookie.isascii():
        return None
    if not same_secret(sig, _sign(key, f"session:{session_id}")):
        return None
    return session_id


def csrf_for(key: bytes, nonce: str) -> str:
    return _sign(key, f"csrf:{nonce}")


def cookie_secure(request: Request, settings: Settings) -> bool:
    if settings.cookie_secure is not None:
        return settings.cookie_secure
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


# ---- rate limits ------------------------------------------------------------------------------------------
class RateLimiter:
    """Token bucket per key (token id, or client address for anonymous reads), in this process."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


# ---- authentication ---------------------------------------------------------------------------------------
def authenticate(request: Request, session: Session) -> Principal:
    """The request's principal, computed once per request (cached on request.state)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    principal = _principal(request, session)
    request.state.principal = principal
    return principal


def _principal(request: Request, session: Session) -> Principal:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HTTPException(401, "Authorization header must be 'Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        token = token_service.lookup(session, secret.strip())
        if token is None:
            raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        token_service.touch(session, token)
        return Principal(token.id, token.name, token_service.granted(token.scopes), "bearer")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        key = request.app.state.secret_key
        session_id = read_session_cookie(key, cookie)
        found = token_service.find_session(session, session_id) if session_id else None
        if found is not None:
            row, token = found
            token_service.touch(session, token)
            return Principal(token.id, token.name, token_service.granted(token.scopes), "cookie",
                             csrf_for(key, row.csrf_secret), session_id)
    return ANONYMOUS


def authorize(request: Request, session: Session, scope: str, *, also: tuple[str, ...] = ()) -> Principal:
    """The principal if it holds `scope` (or one of `also`); 401/403/429 otherwise; CSRF for cookie writes."""
    settings: Settings = request.app.state.settings
    principal = authenticate(request, session)
    allowed = (scope, *also)
    if scope == "read" and settings.public_read and not principal.authenticated:
        _rate_limit(request, f"ip:{request.client.host if request.client else '?'}")
        return principal
    if not principal.authenticated:
        raise HTTPException(401, "authentication required: send 'Authorization: Bearer <token>' "
                                 "(create one with `repscope token create`)", headers={"WWW-Authenticate": "Bearer"})
    if not any(principal.has(s) for s in allowed):
        raise HTTPException(403, f"token {principal.name!r} lacks the {' or '.join(allowed)} scope")
    if principal.via == "cookie" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "form_csrf", None)
        if not sent or not principal.csrf or not same_secret(sent, principal.csrf):
            raise HTTPException(403, f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
    if not principal.has("worker") or principal.has("admin"):  # worker tokens are the service's own machinery
        _rate_limit(request, f"token:{principal.token_id}")
    return principal


def _rate_limit(request: Request, key: str) -> None:
    if getattr(request.state, "rate_checked", False):  # one request counts once, however many checks it passes
        return
    request.state.rate_checked = True
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.take(key)
    if wait > 0:
        per_min = request.app.state.settings.rate_limit_per_minute
        raise HTTPException(429, f"rate limit exceeded: {per_min} requests per minute per token; retry later",
                            headers={"Retry-After": str(max(1, int(wait + 0.999)))})
