"""Where the campaign store lives and how it is opened and migrated.

URL resolution (:func:`resolve_url`): an explicit URL, else ``HYBRIDPREF_DB_URL``, else one SQLite file
under the user's data directory (``platformdirs``: ``~/.local/share/hybridpref/hybridpref.db`` on
Linux). A bare path is a SQLite file; ``postgresql://`` and ``postgres://`` use psycopg 3.

SQLite is opened for durability and concurrency: WAL journal (readers never block the writer),
``synchronous=FULL`` (a commit that returned is on disk: an acknowledged write survives kill -9 and a
power cut), a busy timeout (writers queue instead of failing), foreign keys on. Write transactions
start with ``BEGIN IMMEDIATE`` (:func:`write_engine`): the database's write lock is taken first, so two
writers never both read and then collide on the upgrade to a write lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

ENV_URL = "HYBRIDPREF_DB_URL"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock at BEGIN.
BEGIN_MODE = "hybridpref_begin"


class EncodedJSON(str):
    """A value the store already serialised to JSON text (validating it once, without NaN): the
    engines' JSON serializer passes it through instead of encoding it again."""


_STRICT = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
# orjson would write datetimes and dataclasses; the standard library refuses them, and so does the store.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def strict_json(value: Any) -> EncodedJSON:
    """Compact JSON text of ``value``, refusing NaN and infinity (PostgreSQL rejects them) with the standard
    library's errors (``ValueError``, ``TypeError``). orjson writes the usual value ~10x faster than ``json``
    (a campaign batch's signals and metadata: measured in benchmarks/RESULTS.md), but it writes a non-finite
    float as null: text holding a null, and anything orjson declines (numpy's float subclass, integers past
    64 bits, circular references), goes through the strict standard encoder instead."""
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return EncodedJSON(_STRICT.encode(value))
    if b"null" in text:
        return EncodedJSON(_STRICT.encode(value))
    return EncodedJSON(text.decode())


def json_serializer(value: Any) -> str:
    """JSON for the JSON columns: strict (no NaN / infinity, which PostgreSQL rejects)."""
    return value if isinstance(value, EncodedJSON) else strict_json(value)


def default_sqlite_path() -> Path:
    """``<user data dir>/hybridpref/hybridpref.db`` (the folder is created on first use)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("hybridpref", appauthor=False)) / "hybridpref.db"


def resolve_url(url: str | None = None) -> str:
    """The store URL: ``url`` > ``$HYBRIDPREF_DB_URL`` > the default SQLite file. A value without
    ``://`` is a SQLite file path; ``postgresql://`` / ``postgres://`` get the psycopg 3 driver."""
    value = (url or os.environ.get(ENV_URL) or "").strip()
    if not value:
        path = default_sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return value


def create_store_engine(url: str | None = None, **kwargs) -> Engine:
    """An Engine for the resolved URL, configured per engine (see the module docstring)."""
    resolved = make_url(resolve_url(url))
    kwargs.setdefault("json_serializer", json_serializer)
    if resolved.get_backend_name() == "sqlite":
        return _sqlite_engine(resolved, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    if resolved.get_driver_name() == "psycopg":
        # No server-side prepared statements: after five runs psycopg would prepare a query, and
        # PostgreSQL may then switch to a generic plan, in which `instance_id IN (1,000 parameters)`
        # is a linear scan per row (measured: 0.5 s per replay check at 30k decisions, 15 ms planned
        # with the values).
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("prepare_threshold", None)
        kwargs["connect_args"] = connect_args
    return create_engine(resolved, **kwargs)


def write_engine(engine: Engine) -> Engine:
    """The same pool, with write transactions: ``BEGIN IMMEDIATE`` on SQLite (no-op elsewhere)."""
    return engine.execution_options(**{BEGIN_MODE: "IMMEDIATE"})


def _sqlite_engine(url, **kwargs) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN itself (pysqlite's own implicit BEGIN is
        # deferred and skips SELECTs, which breaks both the write lock and read snapshots).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def head_revision() -> str:
    """The newest migration revision this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    if head is None:
        raise RuntimeError("the store ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision (``None``: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(url: str | Engine | None = None, revision: str = "head") -> str:
    """Upgrade the store's database to ``revision`` (default: the newest); returns the revision
    reached. Safe to run again: an up-to-date database is left as it is."""
    return _alembic("upgrade", url, revision)


def downgrade(url: str | Engine, revision: str) -> str:
    """Take the store's database back to ``revision`` (an older code's, before rolling a deploy back);
    returns the revision reached. Each migration's downgrade keeps the rows its revision can hold."""
    return _alembic("downgrade", url, revision)


def _alembic(direction: str, url: str | Engine | None, revision: str) -> str:
    """Run Alembic's ``upgrade`` / ``downgrade`` to ``revision`` in one write transaction."""
    from alembic import command

    engine = url if isinstance(url, Engine) else create_store_engine(url)
    try:
        with write_engine(engine).begin() as conn:
            cfg = _alembic_config(None)  # env.py uses the open connection, not a URL
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
        return current_revision(engine) or ""
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def _alembic_config(url: str | None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "hybridpref.store:migrations")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
