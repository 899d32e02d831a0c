"""Where the store lives (URL resolution) and how SQLite is opened (durability and locking pragmas)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from hybridpref.store.engine import ENV_URL, create_store_engine, resolve_url, write_engine


def test_url_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ENV_URL, raising=False)
    default = resolve_url()
    assert default == f"sqlite:///{tmp_path / 'xdg' / 'hybridpref' / 'hybridpref.db'}"
    assert (tmp_path / "xdg" / "hybridpref").is_dir()
    monkeypatch.setenv(ENV_URL, "postgres://u@db:5432/hp")
    assert resolve_url() == "postgresql+psycopg://u@db:5432/hp"
    assert resolve_url("postgresql://u@other/hp") == "postgresql+psycopg://u@other/hp"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_url("rel/store.db") == f"sqlite:///{tmp_path / 'rel' / 'store.db'}"


def test_sqlite_is_opened_durable(tmp_path):
    engine = create_store_engine(str(tmp_path / "deep" / "s.db"))
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30_000}
        assert Path(tmp_path / "deep" / "s.db").exists()
    finally:
        engine.dispose()


def test_sqlite_write_transactions_take_the_lock_at_begin(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits at BEGIN (here it fails at once: busy timeout 0) instead of
    both reading and then colliding on the upgrade to a write lock; a reader is never blocked (WAL)."""
    engine = create_store_engine(str(tmp_path / "s.db"))
    impatient = create_store_engine(str(tmp_path / "s.db"))

    @event.listens_for(impatient, "connect")
    def _no_wait(dbapi_connection, _record):  # runs after the store's own hook
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with write_engine(engine).begin() as first:
            first.execute(text("SELECT count(*) FROM t")).scalar()
            with pytest.raises(OperationalError, match="locked"):
                with write_engine(impatient).begin() as second:
                    second.execute(text("SELECT 1"))
            with impatient.connect() as reader:
                assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 0
            first.execute(text("INSERT INTO t VALUES (1)"))
        with write_engine(impatient).begin() as second:
            assert second.execute(text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        engine.dispose()
        impatient.dispose()
