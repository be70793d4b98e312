"""API tokens: random secrets shown once, stored only as sha256 hashes, each with a set of scopes.

Scopes and what they grant (a scope implies the ones listed after it):

    read    GET endpoints and pages (unless the instance is public-read)
    write   create runs, upload artifacts and datasets, log metrics          (+ read)
    worker  claim evaluations, report progress and results, upload derived embeddings   (+ read)
    admin   create, list and revoke tokens                                    (+ read, write, worker)

Browser sessions live here too: a signed-in browser holds a random session id (only its sha256 is stored), bound
to its token; revoking the token, rotating its secret or logging out deletes the row, so the cookie is dead at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import ApiToken, Artifact, BrowserSession, utcnow
from backend.services import Conflict, NotFound

SCOPES = ("read", "write", "worker", "admin")
IMPLIED = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "worker": frozenset({"read", "worker"}),
    "admin": frozenset(SCOPES),
}
TOKEN_PREFIX = "rs_"
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used is written at most once a minute per token


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def granted(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope a token with `scopes` holds, implied ones included."""
    out: set[str] = set()
    for s in scopes:
        out |= IMPLIED.get(s, frozenset())
    return frozenset(out)


def check_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = {s.strip() for s in scopes if s.strip()}
    unknown = sorted(s for s in scopes if s not in SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"a token needs at least one scope out of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


def check_name(name: str) -> str:
    if not TOKEN_NAME.match(name or ""):
        raise ValueError("token name must be 1-100 characters: letters, digits, '_', '.', '@' or '-', "
                         "starting with a letter or digit")
    return name


def create_token(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiToken, str]:
    """A new token; returns the row and its secret (the only time the secret exists outside the caller)."""
    name, scopes = check_name(name), check_scopes(scopes)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise Conflict(f"a token named {name!r} already exists")
    secret = new_secret()
    token = ApiToken(name=name, sha256=hash_secret(secret), scopes=scopes)
    session.add(token)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a token named {name!r} already exists") from None
    return token, secret


def ensure_token(session: Session, name: str, secret: str, scopes: Iterable[str]) -> ApiToken:
    """Make sure `secret` is a valid token named `name` with `scopes` (bootstrap secrets from the environment).
    A token of that name with another secret is rotated to this one."""
    scopes = check_scopes(scopes)
    digest = hash_secret(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.sha256 == digest))
    if token is None:
        token = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if token is None:
            token = ApiToken(name=name, sha256=digest, scopes=scopes)
            session.add(token)
        else:
            token.sha256 = digest
            end_sessions(session, token)  # a rotated secret signs out the browsers that used the old one
    token.scopes = scopes
    session.commit()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def get_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    return token


def find_by_name(session: Session, name: str) -> ApiToken:
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise NotFound(f"token {name!r} not found")
    return token


def revoke(session: Session, token: ApiToken) -> None:
    """Delete the token and, explicitly (SQLite may not enforce FK cascades), its sessions and idempotency claims."""
    end_sessions(session, token)
    session.execute(update(Artifact).where(Artifact.idempotency_token_id == token.id)
                    .values(idempotency_token_id=None))
    session.delete(token)
    session.commit()


def has_admin(session: Session) -> bool:
    return any("admin" in (t.scopes or []) for t in list_tokens(session))


def lookup(session: Session, secret: str) -> ApiToken | None:
    """The token whose hash matches `secret` (hash lookup: no timing oracle on the secret itself)."""
    if not secret or len(secret) > 200:
        return None
    return session.scalar(select(ApiToken).where(ApiToken.sha256 == hash_secret(secret)))


def touch(session: Session, token: ApiToken) -> None:
    """Record use, at most once per LAST_USED_RESOLUTION (no write on every request)."""
    now = utcnow()
    last = token.last_used
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last >= LAST_USED_RESOLUTION:
        token.last_used = now
        session.commit()


# ---- browser sessions ---------------------------------------------------------------------------------------
def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite hands times back without an offset


def create_session(session: Session, token: ApiToken, max_age_s: float) -> tuple[str, BrowserSession]:
    """A new session for `token`; returns its random id (the cookie's content, never stored) and the row.
    Expired sessions of every token are removed on the way."""
    now = utcnow()
    session.execute(delete(BrowserSession).where(BrowserSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    row = BrowserSession(sha256=hash_secret(session_id), token_id=token.id, csrf_secret=secrets.token_hex(32),
                         created_at=now, last_seen=now, expires_at=now + timedelta(seconds=max_age_s))
    session.add(row)
    session.commit()
    return session_id, row


def find_session(session: Session, session_id: str) -> tuple[BrowserSession, ApiToken] | None:
    """The live session with this id and its token; an expired one is deleted and counts as none."""
    if not session_id or len(session_id) > 200:
        return None
    row = session.scalar(select(BrowserSession).where(BrowserSession.sha256 == hash_secret(session_id)))
    if row is None:
        return None
    now = utcnow()
    if _aware(row.expires_at) <= now:
        session.delete(row)
        session.commit()
        return None
    token = session.get(ApiToken, row.token_id)
    if token is None:  # the token went without its sessions (a cascade SQLite did not run)
        session.delete(row)
        session.commit()
        return None
    if now - _aware(row.last_seen) >= LAST_USED_RESOLUTION:
        row.last_seen = now
        session.commit()
    return row, token


def end_session(session: Session, session_id: str) -> None:
    session.execute(delete(BrowserSession).where(BrowserSession.sha256 == hash_secret(session_id)))
    session.commit()


def end_sessions(session: Session, token: ApiToken) -> None:
    """Every session of `token`; the caller commits."""
    session.execute(delete(BrowserSession).where(BrowserSession.token_id == token.id))
