"""Commands of the annotator hand-off:

    hybridpref annotate --campaign NAME [--port 8080] [--host 127.0.0.1] [--db URL] [--seed N]
        serve the annotation page for the campaign NAME (looked up under each annotator's vendor);
    hybridpref annotate token add|revoke --vendor V --annotator NAME [--db URL]
        issue a sign-in token (printed once on stdout) / revoke an annotator's tokens;
    hybridpref campaign export NAME --vendor V --format label-studio|argilla --output PATH [--db URL]
        pending human-routed pairs as Label Studio tasks (PATH, plus the labelling config beside it,
        PATH with suffix .xml) or as an Argilla v2 dataset directory (PATH);
    hybridpref labels import --campaign NAME --vendor V --from label-studio EXPORT.json [--users USERS.json]
        Label Studio's JSON export into the store (idempotent: importing twice stores nothing new).

``--db`` defaults to ``$HYBRIDPREF_DB_URL``, else the local SQLite file (see hybridpref.store.engine);
an SQLite store is migrated on open, a PostgreSQL one must be migrated first. Mistakes print
``error: <field>: <what>`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridpref_client.core.errors import FieldViolation, InvalidInput

if TYPE_CHECKING:  # the CLI imports the store only when a command needs it
    from hybridpref.store.api import CampaignStore, PendingPair

EXIT_USAGE = 2
EXPORT_FORMATS = ("label-studio", "argilla")
PAGE = 1000  # pending pairs read per store call (the store's largest page)


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``hybridpref.cli`` hook: :func:`add_parsers`, each command dispatched to :func:`main` (unless a
    command module registered before this one owns it)."""
    add_parsers(subparsers)
    for name in ("annotate", "campaign", "labels"):
        if subparsers.choices[name].get_default("func") is None:
            subparsers.choices[name].set_defaults(func=main)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``annotate``, ``campaign export`` and ``labels import`` on the top-level subparsers.

    ``campaign`` and ``labels`` are shared with the campaign commands of issue 20 (``campaign create |
    status | export --format trl|pool``, ``labels submit``): the module that owns them adds
    ``add_campaign_export_arguments``' formats and ``add_labels_import`` to its own parsers and sends
    these formats / ``labels import`` to ``main`` here; until then this module registers them itself."""
    add_annotate_parser(sub)
    if "campaign" not in sub.choices:
        campaign = sub.add_parser("campaign", help="campaign hand-offs")
        campaign_sub = campaign.add_subparsers(dest="campaign_command", required=True)
        export = campaign_sub.add_parser("export", help="pending human pairs for Label Studio or Argilla")
        add_campaign_export_arguments(export)
    if "labels" not in sub.choices:
        labels = sub.add_parser("labels", help="human labels")
        add_labels_import(labels.add_subparsers(dest="labels_command", required=True))


def add_annotate_parser(sub: argparse._SubParsersAction) -> None:
    """``hybridpref annotate [token add|revoke]``."""
    annotate = sub.add_parser("annotate", help="serve the annotation page for a campaign; manage annotator tokens")
    annotate.add_argument(
        "--campaign",
        default=os.environ.get("HYBRIDPREF_ANNOTATE_CAMPAIGN"),
        help="campaign name (default $HYBRIDPREF_ANNOTATE_CAMPAIGN)",
    )
    annotate.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    annotate.add_argument("--port", type=int, default=8080)
    annotate.add_argument("--db", default=None, help="campaign store URL (default $HYBRIDPREF_DB_URL, else local SQLite)")
    annotate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="A/B shuffling seed; keep it fixed for a campaign (default $HYBRIDPREF_ANNOTATE_SEED or 0)",
    )
    annotate.add_argument("--secure-cookies", action="store_true", help="mark the sign-in cookie Secure (behind TLS)")
    annotate.add_argument("--log-level", default="info")
    token_sub = annotate.add_subparsers(dest="annotate_command")
    token = token_sub.add_parser("token", help="annotator sign-in tokens")
    token_cmd = token.add_subparsers(dest="token_command", required=True)
    for name, text in (("add", "issue a token (printed once)"), ("revoke", "revoke every token of an annotator")):
        p = token_cmd.add_parser(name, help=text)
        p.add_argument("--vendor", required=True)
        p.add_argument("--annotator", required=True, help="the name labels are stored under (an e-mail works)")
        p.add_argument("--db", default=None)


def add_campaign_export_arguments(export: argparse.ArgumentParser) -> None:
    """Options of ``campaign export`` for the annotator formats (label-studio, argilla)."""
    export.add_argument("name")
    export.add_argument("--vendor", required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    export.add_argument("--output", type=Path, required=True)
    export.add_argument("--limit", type=int, default=None, help="at most this many pairs (default: every pending pair)")
    export.add_argument("--db", default=None)


def add_labels_import(labels_sub: argparse._SubParsersAction) -> None:
    """``labels import`` under an existing ``labels`` command."""
    imp = labels_sub.add_parser("import", help="store labels exported by an annotation tool")
    imp.add_argument("export", type=Path)
    imp.add_argument("--campaign", required=True)
    imp.add_argument("--vendor", required=True)
    imp.add_argument("--from", dest="source", choices=["label-studio"], required=True)
    imp.add_argument(
        "--users", type=Path, default=None, help="Label Studio's user list (GET /api/users) to store e-mails instead of user ids"
    )
    imp.add_argument("--db", default=None)


def open_store(db: str | None) -> Any:
    """The campaign store at ``db``; SQLite is migrated on open (embedded use), other databases not."""
    from hybridpref.store.engine import resolve_url
    from hybridpref.store.sql import SqlCampaignStore

    url = resolve_url(db)
    return SqlCampaignStore.open(url, upgrade=url.startswith("sqlite"))


def main(args: argparse.Namespace) -> int:
    """Run one of the commands registered by ``add_parsers``; user mistakes exit 2 without a traceback."""
    try:
        if args.command == "annotate":
            return _token(args) if args.annotate_command == "token" else _serve(args)
        if args.command == "campaign":
            return _export(args)
        return _import(args)
    except InvalidInput as exc:
        for v in exc.violations:
            print(f"error: {v.field}: {v.description}", file=sys.stderr)
        return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hybridpref.annotate.app import AppConfig, create_app

    if not args.campaign:
        raise InvalidInput(FieldViolation("--campaign", "required (or set HYBRIDPREF_ANNOTATE_CAMPAIGN)"))
    if args.seed is None:
        env_seed = os.environ.get("HYBRIDPREF_ANNOTATE_SEED", "0")
        if not env_seed.lstrip("-").isdigit():
            raise InvalidInput(FieldViolation("HYBRIDPREF_ANNOTATE_SEED", f"expected an integer, got {env_seed!r}"))
        args.seed = int(env_seed)
    if not 0 <= args.port <= 65535:
        raise InvalidInput(FieldViolation("--port", f"must be 0..65535, got {args.port}"))
    store = open_store(args.db)
    app = create_app(store, AppConfig(campaign=args.campaign, seed=args.seed, secure_cookies=args.secure_cookies))
    print(f"annotation page for campaign {args.campaign!r} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, proxy_headers=True, server_header=False
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    from hybridpref.annotate.tokens import issue_token

    store = open_store(args.db)
    if args.token_command == "add":
        token = issue_token(store, args.vendor, args.annotator)
        print(f"token for annotator {args.annotator!r} of {args.vendor!r} (shown once):", file=sys.stderr)
        print(token)
    else:
        n = store.revoke_annotator_tokens(args.vendor, args.annotator)
        print(f"revoked {n} token(s) of {args.annotator!r}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from hybridpref.annotate import argilla, labelstudio

    if args.limit is not None and args.limit < 1:
        raise InvalidInput(FieldViolation("--limit", f"must be >= 1, got {args.limit}"))
    store = open_store(args.db)
    campaign = store.get_campaign(args.vendor, args.name)
    pairs = _pending(store, args.vendor, args.name, args.limit)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "label-studio":
        config_path = args.output.with_suffix(".xml")
        _write_atomic(args.output, json.dumps(labelstudio.tasks(args.name, pairs), ensure_ascii=False, indent=1))
        _write_atomic(config_path, labelstudio.label_config())
        where = (
            f"{args.output} (labelling config: {config_path}; set the project's maximum annotations to "
            f"{campaign.spec.votes_per_pair})"
        )
    else:
        argilla.write_dataset(args.output, args.name, campaign.spec.votes_per_pair, pairs)
        where = f"{args.output} (rg.Dataset.from_disk)"
    more = campaign.pairs_pending - len(pairs)
    print(
        f"exported {len(pairs)} pair(s) to {where}"
        + (f"; {more} more pending: export again once these labels are imported" if more > 0 else ""),
        file=sys.stderr,
    )
    return 0


def _pending(store: CampaignStore, vendor: str, name: str, limit: int | None) -> list[PendingPair]:
    """Every human pair that still lacks votes (up to ``limit``), read a page at a time in routing order."""
    pairs: list[PendingPair] = []
    while limit is None or len(pairs) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(pairs))
        # No annotator is named "": this asks for the pairs whatever who labelled them.
        page = store.pending_pairs(vendor, name, "", size, after=pairs[-1].instance_id if pairs else "")
        pairs += page
        if len(page) < size:
            break
    return pairs


def _import(args: argparse.Namespace) -> int:
    from hybridpref.annotate import labelstudio

    export = _read_json(args.export, "export")
    users = _users(_read_json(args.users, "--users")) if args.users else None
    parsed = labelstudio.parse_export(export, users)
    store = open_store(args.db)
    results = store.submit_labels(args.vendor, args.campaign, parsed.labels) if parsed.labels else []
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    for r in results:
        if r.status == "rejected":
            print(f"error: {r.error}", file=sys.stderr)
    for v in parsed.errors:
        print(f"error: {args.export}: {v.field}: {v.description}", file=sys.stderr)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("stored", "replaced", "unchanged", "rejected"))
    print(
        f"{len(parsed.labels)} label(s) read from {args.export}: {summary}; {len(parsed.skipped)} skipped (cancelled or empty)",
        file=sys.stderr,
    )
    return EXIT_USAGE if parsed.errors or counts.get("rejected") else 0


def _read_json(path: Path, field: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise InvalidInput(FieldViolation(field, f"cannot read {path}: {exc.strerror}")) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(FieldViolation(field, f"{path} line {exc.lineno} column {exc.colno}: {exc.msg}")) from None


def _users(data: Any) -> dict[int, str]:
    """id -> e-mail from Label Studio's user list (a list of {"id", "email"}; a {"results": [...]} page too)."""
    rows = data.get("results", []) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise InvalidInput(FieldViolation("--users", "expected Label Studio's user list (a JSON list of users)"))
    return {
        u["id"]: u["email"]
        for u in rows
        if isinstance(u, dict) and isinstance(u.get("id"), int) and isinstance(u.get("email"), str) and u["email"]
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
