"""API tokens: random secrets shown once, stored only as sha256 hashes, each with a set of scopes.

Scopes and what they grant (a scope implies the ones listed after it):

    read    GET endpoints and pages (unless the instance is public-read)
    write   create runs, upload artifacts and datasets, log metrics          (+ read)
    worker  claim evaluations, report progress and results, upload derived embeddings   (+ read)
    admin   create, list and revoke tokens                                    (+ read, write, worker)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import ApiToken, utcnow
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


def get_token_or_none(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def find_by_name(session: Session, name: str) -> ApiToken:
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise NotFound(f"token {name!r} not found")
    return token


def revoke(session: Session, token: ApiToken) -> None:
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
