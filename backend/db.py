"""Engine and sessions. SQLite (embedded) and PostgreSQL (cluster) behind one SQLAlchemy 2.0 API.

The data dir holds the SQLite database, the session-signing key, the first admin token, uploaded artifacts and
the embedded broker's messages: it is created 0700 and those files 0600 (the directory alone already keeps
other local users out; the file modes keep a copied or moved file private too). A data dir or file found
with looser modes is tightened at start, with a log line naming it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from repscope.settings import Settings

log = logging.getLogger(__name__)
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
SECRET_FILES = ("secret_key", "admin-token")  # in the data dir: backend.security, repscope.cli
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class Base(DeclarativeBase):
    pass


def make_engine(settings: Settings) -> Engine:
    """The engine of settings.resolved_database_url. SQLite: one file, WAL, foreign keys on (the pool settings do
    not apply). Otherwise a QueuePool of db_pool_size kept connections plus up to db_max_overflow opened for
    bursts, pinged before use."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        if (db := sqlite_path(url)) is not None and db.parent.is_dir():  # 0600 before SQLite creates it
            create_private_file(db)
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


# --- file modes -----------------------------------------------------------------------------------------------

def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory databases and other drivers)."""
    parsed = make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return Path(database)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (SQLite takes an empty file as a new database, and
    its -wal / -shm files copy the database's mode); an existing one is tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        tighten(path, PRIVATE_FILE)


def tighten(path: Path, mode: int) -> bool:
    """Clear the permission bits of `path` outside `mode` (never adds any); logs and returns True if it did."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    if not current & ~mode:
        return False
    path.chmod(current & mode)
    log.warning("%s was mode %04o, readable by other users: now %04o", path, current, current & mode)
    return True


def secure_data_dir(settings: Settings) -> None:
    """Create the data dir 0700 (parents as the umask says), the SQLite database 0600; tighten what exists."""
    data_dir = Path(settings.data_dir)
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=PRIVATE_DIR, exist_ok=True)
    tighten(data_dir, PRIVATE_DIR)
    db = sqlite_path(settings.resolved_database_url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(db)
        for suffix in SQLITE_SIDE_FILES:
            tighten(db.with_name(db.name + suffix), PRIVATE_FILE)
    for name in SECRET_FILES:
        tighten(data_dir / name, PRIVATE_FILE)
