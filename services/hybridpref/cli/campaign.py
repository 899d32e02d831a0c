"""``hybridpref campaign``: a labelling job's total budget over many routed batches, its status and its dataset.

    hybridpref campaign create NAME --budget count:N|cost:X [--strategy S] [--expected-instances N] [--votes N]
                                    [--exploration-share F] [--judge J] [--db URL | --router ADDR]
    hybridpref campaign update NAME [--budget count:N|cost:X] [--expected-instances N] [--db URL | --router ADDR]
    hybridpref campaign close NAME [--db URL | --router ADDR]     # no new instance is routed for it
    hybridpref campaign status NAME [--json] [--db URL | --router ADDR]
    hybridpref campaign list [--json] [--db URL | --router ADDR]
    hybridpref campaign export NAME --format trl|trl-chat|pool --output FILE.jsonl|FILE.parquet [--db URL | --router ADDR]
    hybridpref campaign export NAME --format label-studio|argilla --output PATH [--db URL | --router ADDR]   (docs/annotators.md)

Without ``--router`` the commands work on the local campaign store: ``--db URL``, else ``$HYBRIDPREF_DB_URL``,
else the SQLite file under the user's data directory, which ``hybridpref route --campaign`` (without
``--router``) and ``hybridpref up`` use too, so campaigns persist across invocations. The vendor is then
``default`` (``--vendor`` to act for another). With ``--router`` they call the router's CampaignService; the
vendor is the API key's (``$HYBRIDPREF_API_KEY``). Route batches with ``hybridpref route --campaign NAME``
and send labels back with ``hybridpref labels submit``; docs/campaigns.md walks through the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hybridpref.cli import plain
from hybridpref_client.core.errors import FieldViolation, InvalidInput

DATASET_FORMATS = ("trl", "trl-chat", "pool")
HANDOFF_FORMATS = ("label-studio", "argilla")  # hybridpref.cli.annotate writes these
API_KEY_ENV = "HYBRIDPREF_API_KEY"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db URL | --router ADDR`` (and ``--vendor`` for the local store), shared by the campaign and labels
    commands."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="campaign store URL (default $HYBRIDPREF_DB_URL, else the local SQLite file)")
    where.add_argument(
        "--router", default=None, help=f"HOST:PORT of a running router (its CampaignService; API key from ${API_KEY_ENV})"
    )
    parser.add_argument(
        "--vendor",
        default=None,
        help="local store only: the vendor whose campaigns these are (default: 'default', the "
        "vendor of a router without API keys)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="--router: deadline per call, seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    campaign = subparsers.add_parser(
        "campaign",
        help="campaigns: create, status, list, export the dataset",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = campaign.add_subparsers(dest="campaign_command", required=True)

    create = sub.add_parser("create", help="create a campaign with a total human budget")
    create.add_argument("name")
    create.add_argument("--budget", required=True, help="count:N (human labels) or cost:X (cost units)")
    create.add_argument("--strategy", default="", help="strategy whose scores spend the budget (default: the router's)")
    create.add_argument(
        "--expected-instances",
        type=int,
        default=None,
        help="how many instances the campaign will route in all (paces the spending; without it, "
        "each batch may spend all that is left)",
    )
    create.add_argument("--votes", type=int, default=1, help="human votes each human-routed pair needs")
    create.add_argument(
        "--exploration-share",
        type=float,
        default=0.0,
        help="share of the budget spent on randomly drawn pairs (unbiased labels for refits)",
    )
    create.add_argument("--judge", default="", help="'' = the judge service; else a recorded judge to replay")
    add_target_arguments(create)

    update = sub.add_parser("update", help="top up or cut the total budget; change the expected stream size")
    update.add_argument("name")
    update.add_argument("--budget", default=None, help="the new total, in the campaign's unit: count:N or cost:X")
    update.add_argument("--expected-instances", type=int, default=None, help="the stream's new expected size")
    add_target_arguments(update)

    close = sub.add_parser("close", help="route no new instance for the campaign (labels, status, export go on)")
    close.add_argument("name")
    add_target_arguments(close)

    status = sub.add_parser("status", help="budget, labels, judge-human agreement and corrections")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_target_arguments(status)

    listed = sub.add_parser("list", help="the vendor's campaigns")
    listed.add_argument("--json", action="store_true", help="print one JSON object per line")
    add_target_arguments(listed)

    export = sub.add_parser("export", help="the dataset (trl, pool) or the pending pairs for an annotation tool")
    export.add_argument("name")
    export.add_argument(
        "--format",
        required=True,
        choices=DATASET_FORMATS + HANDOFF_FORMATS,
        help="trl (prompt/chosen/rejected + provenance), trl-chat (the same in TRL's conversational form), "
        "pool (hybridpref evaluate's schema), "
        "label-studio or argilla (pending human pairs; see docs/annotators.md)",
    )
    export.add_argument("--output", type=Path, required=True, help=".jsonl or .parquet (trl, pool); a path (others)")
    export.add_argument(
        "--limit", type=int, default=None, help="label-studio / argilla: at most this many pairs (default: every pending pair)"
    )
    add_target_arguments(export)
    campaign.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = args.campaign_command
    with open_campaigns(args) as campaigns, named_fields():
        if command == "export" and args.format in HANDOFF_FORMATS:
            return _handoff(campaigns, args)
        if command == "create":
            return _create(campaigns, args)
        if command == "update":
            return _update(campaigns, args)
        if command == "close":
            closed = campaigns.close_campaign(args.name)
            print(f"campaign {closed.name!r} closed at {closed.closed_at:%Y-%m-%d %H:%M} UTC: it routes no new instance")
            return 0
        if command == "status":
            return _status(campaigns, args)
        if command == "list":
            return _list(campaigns, args)
        return _export(campaigns, args)


@contextmanager
def named_fields():
    """A router's INVALID_ARGUMENT as the CLI's own (``InvalidInput``: exit 2, fields named as flags)."""
    from hybridpref_client import RoutingError

    try:
        yield
    except RoutingError as exc:
        if not exc.violations:
            raise
        raise InvalidInput([FieldViolation(_flag(v.field), v.description) for v in exc.violations]) from None


# ---- the two places a campaign lives -------------------------------------------------------------------


class LocalCampaigns:
    """The SDK client's campaign calls, on a local store (same arguments, same results): the commands are
    written once for ``--db`` and ``--router``. Conversions go through the router's servicer functions, so
    a local status reads exactly as a remote one."""

    def __init__(self, store: Any, vendor: str):
        self.store = store
        self.vendor = vendor

    def create_campaign(
        self,
        name: str,
        budget: str,
        *,
        strategy: str = "",
        judge: str = "",
        votes_per_pair: int = 1,
        expected_instances: int | None = None,
        exploration_share: float = 0.0,
    ):
        from hybridpref.router.campaign_servicer import campaign_to_proto, spec_from_proto
        from hybridpref.router.strategies import DEFAULT_STRATEGY
        from hybridpref.server.settings import Settings
        from hybridpref_client.messages import campaign_budget, campaign_from_proto, create_campaign_request

        request = create_campaign_request(
            name,
            campaign_budget(budget),
            strategy=strategy,
            judge=judge,
            votes_per_pair=votes_per_pair,
            expected_instances=expected_instances,
            exploration_share=exploration_share,
        )
        default = Settings().router.default_strategy or DEFAULT_STRATEGY  # what an embedded router would use
        spec = spec_from_proto(request.settings, self.vendor, default)
        return campaign_from_proto(campaign_to_proto(self.store.create_campaign(spec)))

    def close_campaign(self, name: str):
        from hybridpref.router.campaign_servicer import campaign_to_proto
        from hybridpref_client.messages import campaign_from_proto

        return campaign_from_proto(campaign_to_proto(self.store.close_campaign(self.vendor, name)))

    def update_campaign(self, name: str, budget: str | None = None, *, expected_instances: int | None = None):
        from hybridpref.router.campaign_servicer import campaign_to_proto, update_campaign
        from hybridpref_client.messages import campaign_from_proto, update_campaign_request

        request = update_campaign_request(name, budget, expected_instances=expected_instances)
        return campaign_from_proto(campaign_to_proto(update_campaign(self.store, self.vendor, request)))

    def get_campaign(self, name: str):
        from hybridpref.router.campaign_servicer import annotator_to_proto, campaign_to_proto, status_to_proto
        from hybridpref.v1 import campaign_pb2
        from hybridpref_client.messages import status_from_proto

        status = self.store.status(self.vendor, name)
        annotators = [annotator_to_proto(a) for a in status.annotators]
        return status_from_proto(
            campaign_pb2.GetCampaignResponse(
                campaign=campaign_to_proto(status.campaign), status=status_to_proto(status), annotators=annotators
            )
        )

    def list_campaigns(self):
        from hybridpref.router.campaign_servicer import campaign_to_proto
        from hybridpref_client.messages import campaign_from_proto

        return [campaign_from_proto(campaign_to_proto(c)) for c in self.store.list_campaigns(self.vendor)]

    def submit_labels(self, campaign: str, labels, *, source: str = ""):
        from hybridpref.router.campaign_servicer import labels_from_proto, result_to_proto
        from hybridpref.v1 import campaign_pb2
        from hybridpref_client.messages import label_results, submit_labels_requests, to_labels

        out: list[Any] = []
        for request in submit_labels_requests(campaign, to_labels(labels), source=source):
            results = self.store.submit_labels(self.vendor, campaign, labels_from_proto(request.labels, request.source))
            response = campaign_pb2.SubmitLabelsResponse(results=[result_to_proto(r) for r in results])
            out += label_results(response, len(out))
        return out

    def export_dataset(self, campaign: str, format: str = "trl") -> Iterator[dict[str, Any]]:
        return self.store.export_rows(self.vendor, campaign, format)

    def retract_labels(self, campaign: str, annotator: str, ids: Iterable[str] | None = None) -> int:
        return self.store.retract_labels(self.vendor, campaign, annotator, None if ids is None else list(ids))

    def pending_pairs(self, campaign: str, annotator: str = "", *, page_size: int = 500) -> Iterator[Any]:
        """As ``RouterClient.pending_pairs``: the SDK's ``PendingPair``, a store page at a time."""
        from hybridpref_client.messages import PendingPair

        after = ""
        while True:
            page = self.store.pending_pairs(self.vendor, campaign, annotator, page_size, after=after)
            for p in page:
                yield PendingPair(p.instance_id, p.prompt, p.response_a, p.response_b, p.votes, p.votes_needed)
            if len(page) < page_size:
                return
            after = page[-1].instance_id


class open_campaigns:
    """``with open_campaigns(args) as campaigns``: the router's CampaignService (``--router``) through the SDK,
    or the local store (``--db`` / ``$HYBRIDPREF_DB_URL`` / the default SQLite file)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._close = lambda: None

    def __enter__(self):
        args = self.args
        if args.router:
            if args.vendor:
                raise InvalidInput(
                    FieldViolation(
                        "--vendor", f"with --router the vendor is the API key's (${API_KEY_ENV}); --vendor is for the local store"
                    )
                )
            from hybridpref_client import RouterClient

            key = os.environ.get(API_KEY_ENV, "").strip() or None
            client = RouterClient(args.router, timeout_s=args.timeout, api_key=key)
            self._close = client.close
            return client
        from hybridpref.cli.annotate import open_store
        from hybridpref.store.api import DEFAULT_VENDOR

        store = open_store(args.db)
        self._close = store.close
        return LocalCampaigns(store, args.vendor or DEFAULT_VENDOR)

    def __exit__(self, *exc) -> None:
        self._close()


# ---- the commands ----------------------------------------------------------------------------------------


def _create(campaigns, args: argparse.Namespace) -> int:
    if args.expected_instances is not None and args.expected_instances < 1:
        raise InvalidInput(FieldViolation("--expected-instances", f"must be >= 1, got {args.expected_instances}"))
    if args.votes < 1:
        raise InvalidInput(FieldViolation("--votes", f"must be >= 1, got {args.votes}"))
    if not 0 <= args.exploration_share <= 1:
        raise InvalidInput(FieldViolation("--exploration-share", f"must be in [0, 1], got {args.exploration_share}"))
    try:
        created = campaigns.create_campaign(
            args.name,
            args.budget,
            strategy=args.strategy,
            judge=args.judge,
            votes_per_pair=args.votes,
            expected_instances=args.expected_instances,
            exploration_share=args.exploration_share,
        )
    except InvalidInput as exc:  # the SDK names "budget": the user typed --budget
        raise InvalidInput([FieldViolation(_flag(v.field), v.description) for v in exc.violations]) from None
    print(
        f"created campaign {created.name!r}: budget {_budget_text(created.budget_kind, created.budget_total)}, "
        f"strategy {created.strategy}, {created.votes_per_pair} vote(s) per pair"
        + (
            f", expecting {created.expected_instances} instances"
            if created.expected_instances
            else " (no --expected-instances: each batch may spend all that is left)"
        )
    )
    return 0


def _update(campaigns, args: argparse.Namespace) -> int:
    try:
        updated = campaigns.update_campaign(args.name, args.budget, expected_instances=args.expected_instances)
    except InvalidInput as exc:  # the SDK names "budget" / "expected_instances": the user typed the flags
        raise InvalidInput([FieldViolation(_flag(v.field), v.description) for v in exc.violations]) from None
    print(
        f"campaign {updated.name!r}: budget {_budget_text(updated.budget_kind, updated.budget_total)} "
        f"({_number(updated.budget_spent)} spent, {_number(updated.budget_left)} left)"
        + (f", expecting {updated.expected_instances} instances ({updated.routed} routed)" if updated.expected_instances else "")
    )
    return 0


def _status(campaigns, args: argparse.Namespace) -> int:
    status = campaigns.get_campaign(args.name)
    data = status_dict(status)
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    c = status.campaign
    table = Table(title=f"campaign {c.name}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("strategy / judge", f"{c.strategy} / {c.judge or 'judge service'}")
    table.add_row("budget spent", f"{_number(c.budget_spent)} of {_budget_text(c.budget_kind, c.budget_total)}")
    table.add_row("budget left", _number(c.budget_left))
    table.add_row("routed (to humans)", f"{c.routed} ({c.human_routed})")
    table.add_row("expected instances", str(c.expected_instances) if c.expected_instances else "-")
    if c.closed_at:
        table.add_row("closed", f"{c.closed_at:%Y-%m-%d %H:%M} UTC: routes no new instance")
    table.add_row("labels returned", str(c.labels_returned))
    table.add_row("labels pending", f"{status.labels_pending} ({c.pairs_pending} pairs, {c.votes_per_pair} vote(s) each)")
    table.add_row("judge-human agreement", _interval(status.agreement, percent=True))
    table.add_row("  on audit labels", _interval(status.audit_agreement, percent=True))
    table.add_row(
        "label changes realised / expected",
        f"{status.realised_changes} / {_interval(status.expected_changes)} over {status.changes_known} pairs"
        if status.expected_changes
        else f"{status.realised_corrections} / -",
    )
    table.add_row(
        "net corrections promised",
        _interval(status.expected_corrections) + (f" over {status.expected_known} pairs" if status.expected_corrections else ""),
    )
    console = Console()
    console.print(table)
    if status.annotators:
        console.print(_annotator_table(status.annotators))
    return 0


ANNOTATORS_SHOWN = 20  # the table lists the annotators with most votes; --json has them all


def _annotator_table(annotators):
    from rich.table import Table

    table = Table(title=f"annotators ({min(len(annotators), ANNOTATORS_SHOWN)} of {len(annotators)}, most votes first)")
    for name, justify in (
        ("annotator", "left"),
        ("votes", "right"),
        ("agrees with the others", "right"),
        ("with the LM", "right"),
    ):
        table.add_column(name, justify=justify)
    for a in annotators[:ANNOTATORS_SHOWN]:
        table.add_row(a.annotator, str(a.votes), _interval(a.with_others, percent=True), _interval(a.with_lm, percent=True))
    return table


def _list(campaigns, args: argparse.Namespace) -> int:
    rows = campaigns.list_campaigns()
    if args.json:
        for c in rows:
            print(json.dumps(campaign_dict(c), ensure_ascii=False))
        return 0
    if not rows:
        print("no campaigns", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "strategy", "budget", "spent", "routed", "to humans", "labels", "pending pairs", "created", "closed"):
        table.add_column(column)
    for c in rows:
        table.add_row(
            c.name,
            c.strategy,
            _budget_text(c.budget_kind, c.budget_total),
            _number(c.budget_spent),
            str(c.routed),
            str(c.human_routed),
            str(c.labels_returned),
            str(c.pairs_pending),
            c.created_at.strftime("%Y-%m-%d %H:%M"),
            c.closed_at.strftime("%Y-%m-%d %H:%M") if c.closed_at else "-",
        )
    Console().print(table)
    return 0


def _export(campaigns, args: argparse.Namespace) -> int:
    from hybridpref.store.export import write_export

    suffix = args.output.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise InvalidInput(FieldViolation("--output", f"expected a .jsonl or .parquet file, got {args.output}"))
    rows = campaigns.export_dataset(args.name, args.format)
    rows = _first_checked(rows)  # NOT_FOUND before an empty file is written
    n = write_export(rows, args.output, args.format)
    print(f"wrote {n} {args.format} rows of campaign {args.name!r} to {args.output}", file=sys.stderr)
    return 0


def _handoff(campaigns, args: argparse.Namespace) -> int:
    """label-studio / argilla: the pending pairs (from the router or the local store) in the tool's format."""
    from hybridpref.cli import annotate

    return annotate.export_handoff(campaigns, args)


# ---- shapes ----------------------------------------------------------------------------------------------


def campaign_dict(c) -> dict[str, Any]:
    """A campaign (the SDK's ``Campaign``) as JSON values."""
    out = asdict(c)
    out["created_at"] = c.created_at.isoformat()
    out["closed_at"] = c.closed_at.isoformat() if c.closed_at else None
    return out


def status_dict(s) -> dict[str, Any]:
    """A status (the SDK's ``CampaignStatus``) as one flat JSON object: the campaign's fields, then
    labels_pending, agreement / audit_agreement / expected_corrections / expected_changes ({estimate, low,
    high} or null), realised_corrections, expected_known, realised_changes, changes_known."""
    out = campaign_dict(s.campaign)
    for name in ("labels_pending", "realised_corrections", "expected_known", "realised_changes", "changes_known"):
        out[name] = getattr(s, name)
    for name in ("agreement", "audit_agreement", "expected_corrections", "expected_changes"):
        value = getattr(s, name)
        out[name] = None if value is None else asdict(value)
    out["annotators"] = [asdict(a) for a in s.annotators]  # {annotator, votes, with_others, with_lm}
    return out


def _first_checked(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    iterator = iter(rows)
    try:
        first = next(iterator)
    except StopIteration:
        return iter(())
    return _chain(first, iterator)


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def _flag(field: str) -> str:
    return {
        "budget": "--budget",
        "budget.count": "--budget",
        "budget.cost": "--budget",
        "settings.strategy": "--strategy",
        "settings.budget": "--budget",
        "settings.budget.cost": "--budget",
        "budget.total": "--budget",
        "settings.name": "NAME",
        "name": "NAME",
        "votes_per_pair": "--votes",
        "expected_instances": "--expected-instances",
        "exploration_share": "--exploration-share",
    }.get(field, field)


def _budget_text(kind: str, total: float) -> str:
    return f"{int(total)} labels" if kind == "count" else f"{total:g} cost units"


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _interval(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{value.estimate:.1%} [{value.low:.1%}, {value.high:.1%}] (95%)"
    return f"{value.estimate:.1f} [{value.low:.1f}, {value.high:.1f}] (95%)"
