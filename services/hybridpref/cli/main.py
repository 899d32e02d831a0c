"""The ``hybridpref`` command line.

    hybridpref serve <router|tagger|judge|predictor> [--port N] [--metrics-port N]
    hybridpref up                       # all four, each its own process, on loopback
    hybridpref route --input in.jsonl --budget 0.25 [--router HOST:PORT] [--output out.jsonl]
    hybridpref predictor build ...      # offline: build a model bundle
    hybridpref predictor add-routing-models ...  # offline: add the correction model + domain to a bundle
    hybridpref keys add|hash ...        # API key entries for the router's keys file
    hybridpref evaluate --pool pairs.jsonl --out DIR ...   # offline: does routing help on these pools?
    hybridpref judge train [--data-dir D] # offline: train and export the learned judge

The parser is built inside ``main``; nothing runs at import time. User mistakes
print ``error: ...`` (file line and field where there is one) and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hybridpref_client.core.errors import HybridPrefError, InvalidInput
from hybridpref.server.settings import Settings

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridpref", description="Route preference annotation between humans and an LM judge.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one service until SIGTERM")
    serve.add_argument("service", choices=["router", "tagger", "judge", "predictor"])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-port", type=int)

    up = sub.add_parser("up", help="start all four services on loopback, each its own process")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all SERVING")
    up.add_argument("--port-base", type=int, default=None,
                    help="gRPC ports base..base+3 (router, tagger, judge, predictor), metrics base+100.. (default: 50050.., 9150..)")

    route = sub.add_parser("route", help="route a JSONL batch")
    route.add_argument("--input", type=Path, default=None, help="JSONL instances (default: the sample batch)")
    route.add_argument("--budget", default="0.25", help="fraction (0.25), count (count:100), cost (cost:500) or auto")
    route.add_argument("--strategy", default="", help="strategy name (default: the router's)")
    route.add_argument("--seed", type=int, default=0)
    route.add_argument("--router", default=None, help="HOST:PORT of a running router (default: start an embedded stack)")
    route.add_argument("--output", type=Path, default=None, help="write decisions as JSONL here")
    route.add_argument("--replay-judge", default="", help="use labels recorded under this judge name")
    route.add_argument("--judge-backend", choices=["learned", "embedded", "openai", "replay"], default=None,
                       help="embedded stack only: judge backend (default: learned)")
    route.add_argument("--timeout", type=float, default=900.0, help="deadline for the call, seconds")
    route.add_argument("--log-level", default="WARNING", help="embedded stack's service log level (default WARNING)")

    predictor = sub.add_parser("predictor", help="predictor tools")
    predictor_sub = predictor.add_subparsers(dest="predictor_command", required=True)
    build = predictor_sub.add_parser("build", help="build a model bundle (see --help)", add_help=False)
    build.add_argument("rest", nargs=argparse.REMAINDER)
    routing = predictor_sub.add_parser("add-routing-models", help="add the expected-correction model and domain to a bundle (see --help)", add_help=False)
    routing.add_argument("rest", nargs=argparse.REMAINDER)

    from hybridpref.cli.keys import add_parser as add_keys_parser

    add_keys_parser(sub)
    evaluate = sub.add_parser("evaluate", help="evaluate routing strategies on labelled pools (see --help)", add_help=False)
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    judge = sub.add_parser("judge", help="judge tools")
    judge_sub = judge.add_subparsers(dest="judge_command", required=True)
    train = judge_sub.add_parser("train", help="train and export the learned judge (see --help)", add_help=False)
    train.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["judge", "train"]:  # its own parser: REMAINDER would not pass a leading --help through
        from hybridpref.offline.judge_training import main as train_main

        return train_main(argv[2:])
    if argv[:1] == ["evaluate"]:  # argparse's REMAINDER cannot start with an option (--pool): pass the rest through
        args = argparse.Namespace(command="evaluate", rest=argv[1:])
    else:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if args.command == "predictor":  # same REMAINDER limit: the predictor tools parse their own options
            args.rest = unknown + list(args.rest)
        elif unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "up":
            return cmd_up(args)
        if args.command == "route":
            from hybridpref.cli.route import cmd_route

            return cmd_route(args)
        if args.command == "predictor" and args.predictor_command == "add-routing-models":
            from hybridpref.offline.bundle.routing_build import main as routing_main

            return routing_main(args.rest)
        if args.command == "predictor":
            from hybridpref.offline.bundle.builder import main as build_main

            return build_main(args.rest)
        if args.command == "keys":
            from hybridpref.cli.keys import main as keys_main

            return keys_main(args)
        if args.command == "evaluate":
            from hybridpref.cli.evaluate import main as evaluate_main

            return evaluate_main(args.rest)
    except InvalidInput as exc:
        for v in exc.violations:
            print(f"error: {v.field}: {v.description}", file=sys.stderr)
        return EXIT_USAGE
    except HybridPrefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_serve(args) -> int:
    from hybridpref.server.logs import configure_logging
    from hybridpref.server.server import serve_until_signal
    from hybridpref.cli.stack import handle_for

    flags = {"host": args.host, "port": args.port, "metrics_port": args.metrics_port}
    settings = Settings(server={k: v for k, v in flags.items() if v is not None})
    configure_logging(args.service, settings.server.log_level, settings.server.log_format)
    asyncio.run(serve_until_signal([handle_for(args.service, settings)], settings))
    return 0


def cmd_up(args) -> int:
    from hybridpref.cli.stack import run_up

    def ready(addresses: dict[str, str]) -> None:
        print("hybridpref up: all SERVING: " + ", ".join(f"{n}={a}" for n, a in addresses.items()), flush=True)

    return run_up(Settings(), timeout_s=args.timeout, on_ready=ready, port_base=args.port_base)


if __name__ == "__main__":
    raise SystemExit(main())
