"""Commands of the annotator hand-off:

    hybridpref annotate --campaign NAME [--port 8080] [--host 127.0.0.1] [--db URL] [--seed N]
        serve the annotation page for the campaign NAME (looked up under each annotator's vendor);
    hybridpref annotate token add|revoke --vendor V --annotator NAME [--db URL]
        issue a sign-in token (printed once on stdout) / revoke an annotator's tokens;
    hybridpref campaign export NAME --format label-studio|argilla --output PATH [--limit N] [--db URL [--vendor V] | --router ADDR]
        pending human-routed pairs as Label Studio tasks (PATH, plus the labelling config beside it,
        PATH with suffix .xml) or as an Argilla v2 dataset directory (PATH);
    hybridpref labels import --campaign NAME --from label-studio EXPORT.json [--users USERS.json] [--db URL [--vendor V] | --router ADDR]
        Label Studio's JSON export into the campaign (idempotent: importing twice stores nothing new).

The annotation page reads the campaign store itself (``--db`` defaults to ``$HYBRIDPREF_DB_URL``, else the
local SQLite file; see hybridpref.store.engine; an SQLite store is migrated on open, a PostgreSQL one must be
migrated first). The export and the import also work through a router (``--router``, the vendor from the API
key in ``$HYBRIDPREF_API_KEY``), so a vendor outside the cluster needs no database access. Mistakes print
``error: <field>: <what>`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridpref_client.core.errors import FieldViolation, InvalidInput

if TYPE_CHECKING:  # the CLI imports the store only when a command needs it
    from hybridpref.store.api import PendingPair

EXIT_USAGE = 2
EXPORT_FORMATS = ("label-studio", "argilla")
PAGE = 1000  # pending pairs per call (the store's largest page)


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``hybridpref.cli`` hook: ``annotate [token add|revoke]``. ``campaign export --format
    label-studio|argilla`` and ``labels import`` belong to the campaign and labels commands, which call
    :func:`export_handoff` and :func:`import_labels` here."""
    add_annotate_parser(subparsers)
    subparsers.choices["annotate"].set_defaults(func=main)


def add_annotate_parser(sub: argparse._SubParsersAction) -> None:
    """``hybridpref annotate [token add|revoke]``."""
    annotate = sub.add_parser("annotate", help="serve the annotation page for a campaign; manage annotator tokens")
    annotate.add_argument(
        "--campaign",
        default=os.environ.get("HYBRIDPREF_ANNOTATE_CAMPAIGN"),
        help="campaign name (default $HYBRIDPREF_ANNOTATE_CAMPAIGN)",
    )
    annotate.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    annotate.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    annotate.add_argument("--db", default=None, help="campaign store URL (default $HYBRIDPREF_DB_URL, else local SQLite)")
    annotate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="A/B shuffling seed; keep it fixed for a campaign (default $HYBRIDPREF_ANNOTATE_SEED or 0)",
    )
    annotate.add_argument("--secure-cookies", action="store_true", help="mark the sign-in cookie Secure (behind TLS)")
    annotate.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    token_sub = annotate.add_subparsers(dest="annotate_command")
    token = token_sub.add_parser("token", help="annotator sign-in tokens")
    token_cmd = token.add_subparsers(dest="token_command", required=True)
    for name, text in (("add", "issue a token (printed once)"), ("revoke", "revoke every token of an annotator")):
        p = token_cmd.add_parser(name, help=text)
        p.add_argument("--vendor", required=True, help="the vendor whose campaigns the annotator labels")
        p.add_argument("--annotator", required=True, help="the name labels are stored under (an e-mail works)")
        p.add_argument("--db", default=None, help="campaign store URL (default $HYBRIDPREF_DB_URL, else local SQLite)")


def add_labels_import(labels_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``labels import`` under the ``labels`` command (which adds where the campaign lives)."""
    imp = labels_sub.add_parser("import", help="store labels exported by an annotation tool")
    imp.add_argument("export", type=Path)
    imp.add_argument("--campaign", required=True, help="the campaign the labels are for")
    imp.add_argument("--from", dest="source", choices=["label-studio"], required=True, help="the tool that wrote the export")
    imp.add_argument(
        "--users", type=Path, default=None, help="Label Studio's user list (GET /api/users) to store e-mails instead of user ids"
    )
    return imp


def open_store(db: str | None) -> Any:
    """The campaign store at ``db``; SQLite is migrated on open (embedded use), other databases not."""
    from hybridpref.store.engine import resolve_url
    from hybridpref.store.sql import SqlCampaignStore

    url = resolve_url(db)
    return SqlCampaignStore.open(url, upgrade=url.startswith("sqlite"))


def main(args: argparse.Namespace) -> int:
    """``annotate``: serve the page or manage tokens (user mistakes: ``InvalidInput``, exit 2 in cli.main)."""
    return _token(args) if args.annotate_command == "token" else _serve(args)


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


def export_handoff(campaigns: Any, args: argparse.Namespace) -> int:
    """``campaign export --format label-studio|argilla``: the pending pairs of ``campaigns`` (a router's
    ``RouterClient`` or the CLI's local store, both with ``get_campaign`` and ``pending_pairs``)."""
    from hybridpref.annotate import argilla, labelstudio

    if args.limit is not None and args.limit < 1:
        raise InvalidInput(FieldViolation("--limit", f"must be >= 1, got {args.limit}"))
    campaign = campaigns.get_campaign(args.name).campaign
    pairs = _store_pairs(islice(campaigns.pending_pairs(args.name, page_size=PAGE), args.limit))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "label-studio":
        config_path = args.output.with_suffix(".xml")
        _write_atomic(args.output, json.dumps(labelstudio.tasks(args.name, pairs), ensure_ascii=False, indent=1))
        _write_atomic(config_path, labelstudio.label_config())
        where = (
            f"{args.output} (labelling config: {config_path}; set the project's maximum annotations to {campaign.votes_per_pair})"
        )
    else:
        argilla.write_dataset(args.output, args.name, campaign.votes_per_pair, pairs)
        where = f"{args.output} (rg.Dataset.from_disk)"
    more = campaign.pairs_pending - len(pairs)
    print(
        f"exported {len(pairs)} pair(s) to {where}"
        + (f"; {more} more pending: export again once these labels are imported" if more > 0 else ""),
        file=sys.stderr,
    )
    return 0


def _store_pairs(pairs: Iterable[Any]) -> list[PendingPair]:
    """The SDK's pending pairs as the annotate wing's writers take them."""
    from hybridpref.store.api import PendingPair

    return [PendingPair(p.id, p.prompt, p.response_a, p.response_b, p.votes, p.votes_needed) for p in pairs]


def import_labels(campaigns: Any, args: argparse.Namespace) -> int:
    """``labels import --from label-studio``: the export's labels submitted to ``campaigns`` (a router's
    ``RouterClient`` or the CLI's local store); each label's result printed where it was refused."""
    from hybridpref.annotate import labelstudio

    export = _read_json(args.export, "export")
    users = _users(_read_json(args.users, "--users")) if args.users else None
    parsed = labelstudio.parse_export(export, users)
    from hybridpref_client.messages import HumanLabel

    labels = [HumanLabel(x.instance_id, x.annotator, x.preference, x.strength, x.rationale, x.labelled_at) for x in parsed.labels]
    results = campaigns.submit_labels(args.campaign, labels, source="label-studio") if labels else []
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
