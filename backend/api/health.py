from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from backend.api.deps import QueueDep, SessionDep
from backend.services.evaluations import workers_seen
from repscope import __version__
from repscope.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(session: SessionDep, queue: QueueDep) -> Health:
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # noqa: BLE001
        database = f"unreachable: {exc}"
    broker = queue.ping()
    status = "ok" if database == "ok" and broker == "ok" else "degraded"
    return Health(status=status, database=database, broker=broker,
                  workers_seen=workers_seen(session) if database == "ok" else [], version=__version__)
