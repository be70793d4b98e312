"""Browser sign-in and token administration pages: /login, /logout, /admin/tokens.

Sign-in takes an API token, creates a server-side session and sets its signed cookie (backend.security); logout
deletes the session row, so a copied cookie dies with it. The login form is guarded by a double-submit CSRF
cookie; every other form carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from backend.api.deps import SessionDep
from backend.api.params import SqlInt
from backend.pages.templates import render
from backend.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    authenticate,
    authorize,
    cookie_secure,
    make_session_cookie,
    same_secret,
)
from backend.services import tokens as token_service

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """A page needs a signed-in browser: redirect to /login, then back to `next`."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def page_reader(request: Request, session: SessionDep) -> None:
    """Dependency of every page: read access, else off to the login page."""
    try:
        authorize(request, session, "read")
    except HTTPException as exc:
        if exc.status_code == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target) from None
        raise


def login_redirect(exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only same-site paths: an open redirect after login would be a phishing aid."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    body = (await request.body()).decode("utf-8", errors="replace")
    form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    request.state.form_csrf = form.get("csrf_token")
    return form


def _login_page(request: Request, next_url: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"next": next_url, "error": error, "login_csrf": nonce},
                      status_code=status)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                        secure=cookie_secure(request, request.app.state.settings), path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query name
    return _login_page(request, _safe_next(next))


@router.post("/login")
async def login(request: Request, session: SessionDep) -> Response:
    form = await _form(request)
    next_url = _safe_next(form.get("next"))
    sent, expected = form.get("login_csrf", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not expected or not same_secret(sent, expected):
        return _login_page(request, next_url, "The form expired; please sign in again.", status=403)
    token = token_service.lookup(session, form.get("token", "").strip())
    if token is None:
        return _login_page(request, next_url, "That token is not valid (or it was revoked).", status=401)
    settings = request.app.state.settings
    session_id, _ = token_service.create_session(session, token, settings.session_max_age_s)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(SESSION_COOKIE, make_session_cookie(request.app.state.secret_key, session_id),
                        max_age=int(settings.session_max_age_s), httponly=True, samesite="lax",
                        secure=cookie_secure(request, settings), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    token_service.touch(session, token)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    await _form(request)
    principal = authenticate(request, session)
    if principal.via == "cookie":
        authorize(request, session, "read")  # checks the CSRF token: no cross-site logouts
        token_service.end_session(session, principal.session_id or "")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _admin_page(request: Request, session, created: dict | None = None, error: str | None = None,  # noqa: ANN001
                status: int = 200) -> HTMLResponse:
    tokens = token_service.list_tokens(session)
    return render(request, "admin_tokens.html", {
        "tokens": tokens, "scopes": token_service.SCOPES, "created": created, "error": error,
    }, status_code=status)


def _require_admin(request: Request, session) -> None:  # noqa: ANN001
    try:
        authorize(request, session, "admin")
    except HTTPException as exc:
        if exc.status_code == 401:
            raise LoginRequired(request.url.path) from None
        raise


@router.get("/admin/tokens", response_class=HTMLResponse)
def admin_tokens(request: Request, session: SessionDep) -> HTMLResponse:
    _require_admin(request, session)
    return _admin_page(request, session)


@router.post("/admin/tokens", response_class=HTMLResponse)
async def admin_create_token(request: Request, session: SessionDep) -> HTMLResponse:
    body = (await request.body()).decode("utf-8", errors="replace")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    fields = parse_qs(body, keep_blank_values=True)
    request.state.form_csrf = (fields.get("csrf_token") or [None])[-1]
    _require_admin(request, session)
    name = (fields.get("name") or [""])[-1].strip()
    try:
        token, secret = token_service.create_token(session, name, fields.get("scopes", []))
    except ValueError as exc:
        return _admin_page(request, session, error=str(exc), status=422)
    except token_service.Conflict as exc:
        return _admin_page(request, session, error=str(exc), status=409)
    return _admin_page(request, session, created={"name": token.name, "scopes": token.scopes, "secret": secret},
                       status=201)


@router.post("/admin/tokens/{token_id}/revoke")
async def admin_revoke_token(token_id: SqlInt, request: Request, session: SessionDep) -> Response:
    await _form(request)
    _require_admin(request, session)
    token_service.revoke(session, token_service.get_token(session, token_id))
    return RedirectResponse("/admin/tokens", status_code=303)
