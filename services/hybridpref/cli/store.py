"""``hybridpref store``: the campaign store's database.

hybridpref store migrate [--db URL]
    bring the database to the newest schema revision (safe to run again: an up-to-date database is left
    as it is). Production runs it as a Kubernetes Job before the router starts (deploy/k8s/components/
    postgres): a router refuses campaign calls on a database that is behind. ``--db`` defaults to
    ``$HYBRIDPREF_DB_URL``, else the local SQLite file (which migrates itself when opened anyway).
"""

from __future__ import annotations

import argparse
import sys

from hybridpref.cli import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    store = subparsers.add_parser(
        "store",
        help="the campaign store's database (migrate)",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = store.add_subparsers(dest="store_command", required=True)
    migrate = sub.add_parser("migrate", help="upgrade the database to the newest schema revision")
    migrate.add_argument("--db", default=None, help="store URL (default $HYBRIDPREF_DB_URL, else the local SQLite file)")
    store.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from hybridpref.store.engine import create_store_engine, current_revision, migrate, resolve_url
    from hybridpref_client.core.errors import NotReady

    url = resolve_url(args.db)
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_store_engine(url)
    try:
        before = current_revision(engine)
        after = migrate(engine)
    except SQLAlchemyError as exc:
        raise NotReady(f"cannot migrate {shown}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        engine.dispose()
    if before == after:
        print(f"{shown}: already at revision {after}", file=sys.stderr)
    else:
        print(f"{shown}: migrated from {before or 'an empty database'} to {after}", file=sys.stderr)
    return 0
