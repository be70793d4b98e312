"""The API's PostgreSQL pool follows REPSCOPE_DB_POOL_SIZE / REPSCOPE_DB_MAX_OVERFLOW (engines connect lazily,
so no server is needed to read the pool's shape)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.pool import QueuePool

from backend.db import make_engine
from repscope.settings import Settings

PG_URL = "postgresql+psycopg://nobody@127.0.0.1:1/never"


def test_pool_shape_comes_from_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("REPSCOPE_DB_POOL_SIZE", "7")
    monkeypatch.setenv("REPSCOPE_DB_MAX_OVERFLOW", "3")
    s = Settings()
    assert (s.db_pool_size, s.db_max_overflow) == (7, 3)
    engine = make_engine(s.model_copy(update={"database_url": PG_URL}))
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.size() == 7
    assert engine.pool._max_overflow == 3  # noqa: SLF001 (SQLAlchemy exposes no getter)
    assert engine.pool.overflow() == -7  # nothing checked out yet, nothing opened
    # the API builds its engine the same way (connections open lazily: no server needed here either)
    from backend.app import create_app

    app = create_app(s.model_copy(update={"database_url": PG_URL, "data_dir": tmp_path}), run_sweeper=False)
    assert app.state.engine.pool.size() == 7


def test_defaults_and_bad_values(monkeypatch):
    s = Settings()
    assert (s.db_pool_size, s.db_max_overflow) == (20, 10)
    monkeypatch.setenv("REPSCOPE_DB_POOL_SIZE", "0")
    with pytest.raises(ValidationError, match="db_pool_size"):
        Settings()


def test_sqlite_ignores_pool_settings(tmp_path):
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", db_pool_size=3, db_max_overflow=0))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
