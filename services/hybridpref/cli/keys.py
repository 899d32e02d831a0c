"""``hybridpref keys``: make entries for the router's API keys file.

hybridpref keys add --file keys.yaml --vendor acme [--methods RouteInstances ...]
                    [--instances-per-minute N] [--max-concurrent N]
    adds (or replaces) the vendor with a new random key, stores only its hash, prints the
    key once on stdout (hand it to the vendor; it cannot be recovered later);
hybridpref keys hash [--key KEY]   # KEY or one line from stdin
    prints the SHA-256 to put in ``key_sha256`` by hand.
"""

from __future__ import annotations

import argparse
import sys

from hybridpref.cli import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="make API key entries for the router's keys file",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="add a vendor with a new random key (prints the key once)")
    add.add_argument("--file", required=True, help="the keys file (JSON, or YAML by its .yaml/.yml suffix); created if missing")
    add.add_argument("--vendor", required=True, help="the vendor name the key stands for (metrics, logs, campaigns)")
    add.add_argument("--methods", nargs="*", default=None, help="method names the vendor may call (default: all)")
    add.add_argument("--instances-per-minute", type=int, default=0, help="0 = unlimited")
    add.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        help="calls at once; 0 = the server default (HYBRIDPREF_API_VENDOR_MAX_CONCURRENT, 32)",
    )
    hashed = keys_sub.add_parser("hash", help="print the SHA-256 of a key (from --key or stdin)")
    hashed.add_argument("--key", default=None, help="the key (default: read from stdin, which keeps it out of shell history)")
    keys.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridpref.server.auth import add_vendor, hash_key

    if args.keys_command == "hash":
        key = args.key if args.key is not None else sys.stdin.readline().strip()
        if not key:
            print("error: no key given", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    key = add_vendor(
        args.file,
        args.vendor,
        methods=args.methods,
        instances_per_minute=args.instances_per_minute,
        max_concurrent=args.max_concurrent,
    )
    print(f"added vendor {args.vendor!r} to {args.file}; its key (shown once):", file=sys.stderr)
    print(key)
    return 0
