"""Alembic environment of the campaign store. Run through :func:`hybridpref.store.engine.migrate`
(``script_location`` is this package), never with an alembic.ini: the URL or an open connection comes
from the caller's Config."""

from __future__ import annotations

from alembic import context

from hybridpref.store.engine import create_store_engine
from hybridpref.store.models import Base

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_store_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table with its rows.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the campaign store's migrations run online only (hybridpref.store.engine.migrate)")
run_migrations_online()
