"""Engine and sessions. SQLite (embedded) and PostgreSQL (cluster) behind one SQLAlchemy 2.0 API."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from repscope.settings import Settings


class Base(DeclarativeBase):
    pass


def make_engine(settings: Settings) -> Engine:
    """The engine of settings.resolved_database_url. SQLite: one file, WAL, foreign keys on (the pool settings do
    not apply). Otherwise a QueuePool of db_pool_size kept connections plus up to db_max_overflow opened for
    bursts, pinged before use."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=settings.db_pool_size,
                         max_overflow=settings.db_max_overflow)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        yield session
