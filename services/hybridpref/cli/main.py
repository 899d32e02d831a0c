"""The ``hybridpref`` command: assembles one parser from the command modules and dispatches.

    hybridpref serve <router|tagger|judge|predictor> [--port N] [--metrics-port N]
    hybridpref up                       # all four, each its own process, on loopback
    hybridpref route --input in.jsonl --budget 0.25 [--router HOST:PORT] [--output out.jsonl]
    hybridpref keys add|hash ...        # API key entries for the router's keys file
    hybridpref evaluate --pool pairs.jsonl --out DIR ...   # offline: does routing help on these pools?
    hybridpref predictor build ...      # offline: build a model bundle
    hybridpref predictor add-routing-models ...  # offline: add the correction model + domain to a bundle
    hybridpref judge train --out DIR    # offline: train and export the learned judge
    hybridpref campaign create|status|list|export ...   # campaigns: a total budget over many batches
    hybridpref route --campaign NAME --input batch.jsonl --output decisions.jsonl
    hybridpref labels submit --campaign NAME --input labels.jsonl
    hybridpref store migrate --db URL     # the campaign store's schema
    hybridpref annotate --campaign NAME --port P   # the annotation page (and `annotate token add|revoke`)
    hybridpref campaign export NAME --format label-studio|argilla --output PATH
    hybridpref labels import --campaign NAME --vendor V --from label-studio export.json

Each command module registers its own subparser (``register``) and sets ``func``; see
:mod:`hybridpref.cli` for adding one. Nothing runs at import time. User mistakes print
``error: ...`` (file line and field where there is one) and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybridpref.cli import annotate, campaign, evaluate, judge, keys, labels, predictor, route, serve, store
from hybridpref_client.core.errors import HybridprefError, InvalidInput

EXIT_USAGE = 2
# In the order ``hybridpref --help`` lists them.
# campaign and labels before annotate: they own those groups, and annotate adds its formats to them.
COMMANDS = (serve, route, campaign, labels, store, keys, evaluate, predictor, judge, annotate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridpref", description="Route preference annotation between humans and an LM judge.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybridpref")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return int(args.func(args))
    except InvalidInput as exc:
        for v in exc.violations:
            print(f"error: {v.field}: {v.description}", file=sys.stderr)
        return EXIT_USAGE
    except HybridprefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
