from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import QueueDep, SessionDep
from backend.services.evaluations import workers_seen
from backend.services.health import database_status
from repscope import __version__
from repscope.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(session: SessionDep, queue: QueueDep) -> Health:
    database = database_status(session)
    broker = queue.ping()
    status = "ok" if database == "ok" and broker == "ok" else "degraded"
    return Health(status=status, database=database, broker=broker,
                  workers_seen=workers_seen(session) if database == "ok" else [], version=__version__)
