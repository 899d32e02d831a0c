"""``hybridpref serve`` (one service until SIGTERM) and ``hybridpref up`` (all four, each its own process).

    hybridpref serve <router|tagger|judge|predictor> [--host H] [--port N] [--metrics-port N] [--db URL]
    hybridpref up [--timeout S] [--port-base N] [--db URL]

``--db``: the router's campaign store (``HYBRIDPREF_DB_URL``; default: the SQLite file under the user's
data directory that the ``hybridpref campaign`` / ``labels`` commands share; docs/campaigns.md).

Settings come from the ``HYBRIDPREF_*`` environment (docs/operations.md); the flags win.
"""

from __future__ import annotations

import argparse

from hybridpref.cli import plain

SERVICES = ("router", "tagger", "judge", "predictor")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run one service until SIGTERM",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", help="bind address (default: HYBRIDPREF_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default: HYBRIDPREF_PORT, else the service's own)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (-1: none)")
    serve.add_argument(
        "--db", default=None, help="router: the campaign store URL (default: HYBRIDPREF_DB_URL, else the local SQLite file)"
    )
    serve.set_defaults(func=run_serve)

    up = subparsers.add_parser(
        "up",
        help="start all four services on loopback, each its own process",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all SERVING")
    up.add_argument(
        "--port-base",
        type=int,
        default=None,
        help="gRPC ports base..base+3 (router, tagger, judge, predictor), metrics base+100.. (default: 50050.., 9150..)",
    )
    up.add_argument(
        "--db", default=None, help="the router's campaign store URL (default: HYBRIDPREF_DB_URL, else the local SQLite file)"
    )
    up.set_defaults(func=run_up)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from hybridpref.cli.stack import handle_for
    from hybridpref.server.logs import configure_logging
    from hybridpref.server.server import serve_until_signal
    from hybridpref.server.settings import Settings
    from hybridpref_client.core.errors import FieldViolation, InvalidInput

    if args.db and args.service != "router":
        raise InvalidInput(FieldViolation("--db", "only the router opens the campaign store"))
    flags = {"host": args.host, "port": args.port, "metrics_port": args.metrics_port}
    settings = Settings(server={k: v for k, v in flags.items() if v is not None}, router={"db_url": args.db} if args.db else {})
    configure_logging(args.service, settings.server.log_level, settings.server.log_format)
    asyncio.run(serve_until_signal([handle_for(args.service, settings)], settings))
    return 0


def run_up(args: argparse.Namespace) -> int:
    from hybridpref.cli.stack import run_up as start_all
    from hybridpref.server.settings import Settings

    def ready(addresses: dict[str, str]) -> None:
        print("hybridpref up: all SERVING: " + ", ".join(f"{n}={a}" for n, a in addresses.items()), flush=True)

    if args.db:  # the router process reads it from its environment
        import os

        os.environ["HYBRIDPREF_DB_URL"] = args.db
    return start_all(Settings(), timeout_s=args.timeout, on_ready=ready, port_base=args.port_base)
