"""What /health reports about the database: a trivial query answered, or the error that stopped it."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def database_status(session: Session) -> str:
    """"ok", or "unreachable: <error>" when the database does not answer `SELECT 1`."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised: /health must answer
        return f"unreachable: {exc}"
    return "ok"
