"""``hybridpref route``: route a JSONL batch against a running router, or an embedded stack.

    hybridpref route --input in.jsonl --budget 0.25 [--router HOST:PORT] [--output out.jsonl]

Budgets: a fraction (``0.25``), a count (``count:100``), a total cost (``cost:500``) or ``auto``. Bad rows are
named by their line in the input file; ``--on-bad-row skip`` routes the others and writes the bad ones, with
their reasons, to ``--rejects``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hybridpref.cli import plain
from hybridpref.common.fields import rename_instance
from hybridpref.server.settings import Settings
from hybridpref_client.core.errors import FieldViolation, InvalidInput

SAMPLE_BATCH = Path(__file__).resolve().parents[3] / "samples" / "sample_batch.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    route = subparsers.add_parser(
        "route", help="route a JSONL batch", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    route.add_argument("--input", type=Path, default=None, help="JSONL instances (default: the sample batch)")
    route.add_argument(
        "--budget",
        default=None,
        help="fraction (0.25, the default), count (count:100), cost (cost:500) or auto; not with --campaign",
    )
    route.add_argument(
        "--campaign",
        default=None,
        help="route for this campaign (hybridpref campaign create): its total budget governs, every "
        "decision is stored, a re-sent id returns its stored decision and spends nothing",
    )
    route.add_argument("--batch", default=None, help="with --campaign: the batch's name as stored (default: the request id)")
    route.add_argument(
        "--db",
        default=None,
        help="embedded stack with --campaign: the campaign store (default $HYBRIDPREF_DB_URL, else the "
        "local SQLite file that `hybridpref campaign` uses)",
    )
    route.add_argument("--strategy", default="", help="strategy name (default: the router's)")
    route.add_argument(
        "--seed", type=int, default=0, help="seed of the strategy's random choices (same batch + seed = same decisions)"
    )
    route.add_argument("--router", default=None, help="HOST:PORT of a running router (default: start an embedded stack)")
    route.add_argument("--output", type=Path, default=None, help="write decisions as JSONL here")
    route.add_argument("--replay-judge", default="", help="use labels recorded under this judge name")
    route.add_argument(
        "--judge-backend",
        choices=["learned", "embedded", "openai", "replay"],
        default=None,
        help="embedded stack only: judge backend (default: learned)",
    )
    route.add_argument(
        "--on-bad-row",
        choices=["fail", "skip"],
        default="fail",
        help="fail (default): name every bad row and route nothing; skip: route the valid rows and "
        "write the others with their reasons to --rejects",
    )
    route.add_argument(
        "--rejects",
        type=Path,
        default=None,
        help="with --on-bad-row skip: the rejected rows as JSONL {line, id, field, reason} "
        "(default: <input name>.rejects.jsonl in the current directory)",
    )
    route.add_argument("--timeout", type=float, default=900.0, help="deadline for the call, seconds")
    route.add_argument("--log-level", default="WARNING", help="embedded stack's service log level (default WARNING)")
    route.set_defaults(func=run)


# Rows named on the terminal when a file has bad rows (the count covers the rest; --on-bad-row skip writes all).
MAX_NAMED = 50
# Request bytes per stream chunk the CLI aims for (the router's default message limit is 64 MiB).
CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class BadRow:
    """A row that was not routed: its file line, id (if it has one), the field at fault and why."""

    line: int
    id: str
    field: str
    reason: str

    def violation(self) -> FieldViolation:
        return FieldViolation(f"line {self.line}" + (f".{self.field}" if self.field else ""), self.reason)


def read_rows(path: Path, limits) -> tuple[list, list[int], list[BadRow]]:
    """(instances, their file lines, bad rows) of a JSONL file: every row is read, a bad one (not UTF-8,
    not JSON, a wrong or missing field, a text longer than the router accepts) is listed, not raised."""
    import json

    from hybridpref_client.core.instances import decode_line, instance_from_row, line_problem

    instances, lines, bad = [], [], []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(decode_line(raw))
            except ValueError as exc:
                bad.append(BadRow(lineno, "", "", line_problem(exc)))
                continue
            row_id = str(row.get("id", "")) if isinstance(row, dict) else ""
            try:
                inst = instance_from_row(row, where=f"line {lineno}")
            except InvalidInput as exc:
                bad.extend(
                    BadRow(lineno, row_id, v.field.removeprefix(f"line {lineno}").lstrip("."), v.description)
                    for v in exc.violations
                )
                continue
            too_long = [
                name for name in ("prompt", "response_a", "response_b") if len(getattr(inst, name)) > limits.max_text_chars
            ]
            too_long += [f"messages[{j}]" for j, m in enumerate(inst.messages) if len(m.content) > limits.max_text_chars]
            if too_long:  # a 70 MB line would otherwise fail the whole send with a gRPC message-size error
                bad.extend(BadRow(lineno, inst.id, name, f"longer than {limits.max_text_chars} characters") for name in too_long)
                continue
            instances.append(inst)
            lines.append(lineno)
    return instances, lines, bad


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hybridpref_client import RouterClient, RoutingError, write_decisions
    from hybridpref_client.core.limits import DEFAULT_LIMITS

    path = Path(args.input or SAMPLE_BATCH)
    if not path.exists():
        raise InvalidInput(FieldViolation("--input", f"no such file: {path}"))
    skip = getattr(args, "on_bad_row", "fail") == "skip"
    instances, lines, bad = read_rows(path, DEFAULT_LIMITS)
    if bad and not skip:
        raise InvalidInput(_named(bad, "rerun with --on-bad-row skip to route the other rows"))
    if not instances:
        raise InvalidInput(
            FieldViolation("--input", f"{path}: no valid rows to route" if bad else f"{path}: no rows (empty file)")
        )
    if args.campaign:
        if args.budget:
            raise InvalidInput(FieldViolation("--budget", "not with --campaign: the campaign's total budget governs"))
        if args.router and args.db:
            raise InvalidInput(FieldViolation("--db", "for the embedded stack only: a running router uses its own store"))
        budget, what = None, f"campaign {args.campaign!r}"
    else:
        for flag, value in (("--batch", args.batch), ("--db", args.db)):
            if value:
                raise InvalidInput(FieldViolation(flag, "only with --campaign"))
        budget, what = parse_budget(args.budget or "0.25"), f"budget {args.budget or '0.25'}"
    campaign = {"campaign": args.campaign, "batch": args.batch or ""} if args.campaign else {}
    console = Console(stderr=True)
    console.print(
        f"routing {len(instances)} instances from {path} ({what})"
        + (f"; {len({b.line for b in bad})} bad rows skipped" if bad else "")
    )
    key = os.environ.get("HYBRIDPREF_API_KEY", "").strip() or None
    with _router(args, console) as (address, judge_name), RouterClient(address, timeout_s=args.timeout, api_key=key) as client:
        try:
            with _progress(console, len(instances)) as advance:
                result = client.route_stream(
                    instances,
                    budget,
                    args.strategy,
                    args.seed,
                    replay_judge=args.replay_judge,
                    on_progress=advance,
                    chunk_size=_chunk_size(instances),
                    skip_invalid_instances=skip,
                    **campaign,
                )
        except RoutingError as exc:
            if exc.violations:
                named = [_to_line(field, text, lines) for field, text in exc.violations]
                if exc.violation_total > len(named):  # the router lists the first ones only
                    named.append(FieldViolation("--input", f"{exc.violation_total - len(named)} more bad fields not listed"))
                raise InvalidInput(named) from None
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if skip:
        bad += [
            BadRow(lines[r["index"]], r["id"], _field_of(r["field"]), r["description"])
            for r in result.summary.get("rejected", [])
            if r["index"] < len(lines)
        ]
        if bad:
            rejects = Path(args.rejects or f"{path.stem}.rejects.jsonl")
            _write_rejects(rejects, bad)
            console.print(f"[bold yellow]skipped {len({b.line for b in bad})} bad rows[/]; reasons in {rejects}", highlight=False)
    print_summary(console, result, judge_name)
    if args.output:
        write_decisions(args.output, result)
        console.print(f"wrote {len(result.decisions)} decisions to {args.output}")
    return 0


def _named(bad: list[BadRow], hint: str) -> list[FieldViolation]:
    named = [b.violation() for b in bad[:MAX_NAMED]]
    if len(bad) > MAX_NAMED:
        named.append(FieldViolation("--input", f"{len(bad) - MAX_NAMED} more bad fields not listed"))
    named.append(FieldViolation("--input", f"{len({b.line for b in bad})} bad rows; {hint}"))
    return named


def _field_of(field: str) -> str:
    """``instances[3].response_a`` -> ``response_a``."""
    return re.sub(r"^instances\[\d+\]\.?", "", field)


def _write_rejects(path: Path, bad: list[BadRow]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as fh:
        for b in sorted(bad, key=lambda b: b.line):
            fh.write(json.dumps({"line": b.line, "id": b.id, "field": b.field, "reason": b.reason}, ensure_ascii=False) + "\n")


def _chunk_size(instances) -> int:
    """Rows per stream chunk: the SDK's default, fewer when rows are large (a chunk stays near CHUNK_BYTES)."""
    from hybridpref_client.messages import STREAM_CHUNK

    largest = max(
        (len(i.prompt) + len(i.response_a) + len(i.response_b) + sum(len(m.content) for m in i.messages) for i in instances),
        default=1,
    )
    return max(1, min(STREAM_CHUNK, CHUNK_BYTES // max(1, 4 * largest)))


def parse_budget(text: str):
    """``0.25`` / ``25%`` -> fraction, ``count:100`` -> count, ``cost:500`` -> cost, ``auto``: an explicit
    ``hybridpref_client.Budget`` (the SDK deprecates bare numbers)."""
    from hybridpref_client import Budget

    try:
        return Budget.parse(text)
    except InvalidInput as exc:
        if exc.violations[0].field != "budget":  # readable but out of range: the field as the router names it
            raise
        raise InvalidInput(
            FieldViolation("--budget", f"cannot read {text!r}; use 0.25, 25%, count:100, cost:500 or auto")
        ) from None


def _to_line(field: str, text: str, lines: list[int]) -> FieldViolation:
    """``instances[3].response_a`` -> ``line 5.response_a`` (the input file's line)."""
    return FieldViolation(rename_instance(field, lambda i: f"line {lines[i]}" if i < len(lines) else None), text)


@contextmanager
def _router(args, console):
    """(router address, name of the judge that labels): the given router, or an embedded stack run in a
    background thread."""
    if args.router:
        judge = (
            f"recorded labels of {args.replay_judge!r} (replayed by the router)"
            if args.replay_judge
            else f"the judge service behind {args.router}"
        )
        yield args.router, judge
        return
    from hybridpref.cli.stack import BackgroundLoop, start_embedded_stack
    from hybridpref.server.logs import configure_logging

    configure_logging("hybridpref-route", args.log_level, "console")
    settings = Settings(
        judge={"backend": args.judge_backend} if args.judge_backend else {}, router={"db_url": args.db} if args.db else {}
    )
    background = BackgroundLoop()
    console.print("starting an embedded stack (tagger, judge, predictor, router) on loopback; loading models...")
    stack = background.run(start_embedded_stack(settings))
    try:
        yield stack.router_address, _judge_name(settings, args.replay_judge)
    finally:
        background.run(stack.stop())
        background.close()


def _judge_name(settings: Settings, replay_judge: str) -> str:
    """``judge_id`` of the judge that labels, e.g. ``learned:hybridpref-judge-v1``; with ``replay_judge``
    the router replays the rows' recorded labels whatever the judge service runs."""
    if replay_judge:
        return f"replay:{replay_judge} (recorded labels, replayed by the router)"
    from hybridpref.judge.servicer import build_judge

    return build_judge(settings).judge_id  # builds only; no model is loaded a second time


@contextmanager
def _progress(console, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False
    ) as progress:
        tasks = {"sent": progress.add_task("sent", total=total)}

        def advance(phase: str, n: int) -> None:
            if phase == "retry":  # the SDK retries the whole stream: counts start again
                for task in tasks.values():
                    progress.reset(task)
                return
            if phase not in tasks:  # the router's stages, as it reports them; "received" comes last
                # Judged: every pair or only the LM-routed ones, by strategy, so no total for that bar.
                label = {"received": "routed"}.get(phase, phase)
                tasks[phase] = progress.add_task(label, total=None if phase == "judged" else total)
            progress.advance(tasks[phase], n)

        yield advance


UNSURE_BELOW = 0.6  # a judge confidence under this is "unsure" in the summary (the router may send it to humans)


def print_summary(console, result, judge_name: str = "") -> None:
    from rich.table import Table

    s = result.summary
    table = Table(title=f"routing summary (request {s.get('request_id') or result.request_id})")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("strategy", s.get("strategy", ""))
    table.add_row("bundle", s.get("bundle_version", "") or "-")
    if s.get("correction_model_version"):
        table.add_row("correction model", s["correction_model_version"])
    table.add_row("to humans", str(s.get("human_count", 0)))
    table.add_row("to LM judge", str(s.get("lm_count", 0)))
    table.add_row("human cost", f"{s.get('human_cost', 0.0):.1f}")
    campaign = s.get("campaign")
    if campaign:
        table.add_row("campaign", f"{campaign['name']} (batch {campaign['batch']})")
        table.add_row("campaign budget spent / left", f"{campaign['budget_spent']:g} / {campaign['budget_left']:g}")
        if campaign["replayed"]:
            table.add_row("already stored (replayed)", str(campaign["replayed"]))
    level = s.get("interval_level", 0.0)
    for name, label in (
        ("chosen", "chosen"),
        ("all_human", "all human"),
        ("all_lm", "all LM"),
        ("random", "random, same budget"),
    ):
        mix = s.get("mixes", {}).get(name)
        if mix is None:
            continue
        table.add_row(
            f"predicted score, {label}", _estimate_text(mix.get("predicted_score"), level, 4, mix.get("score_note", ""))
        )
        if "expected_corrections" in mix:
            table.add_row(f"expected corrections, {label}", _estimate_text(mix["expected_corrections"], level, 1, ""))
    domain = s.get("domain")
    if domain:
        verdict = "in domain" if domain["in_domain"] else "OUT OF DOMAIN"
        table.add_row("domain", f"{verdict}: {domain['distance']:.3f} vs {domain['threshold']:.3f} ({domain['nearest_pool']})")
    lm = [d for d in result.decisions if d.route == "LM"]
    labels = Counter(d.lm_label for d in lm)
    if judge_name:
        table.add_row("judge", judge_name)
    table.add_row("LM labels", ", ".join(f"{k}={v}" for k, v in sorted(labels.items(), key=lambda kv: str(kv[0]))) or "-")
    if lm:
        unsure = sum(d.lm_confidence < UNSURE_BELOW for d in lm)
        mean_conf = sum(d.lm_confidence for d in lm) / len(lm)
        table.add_row("LM label confidence", f"mean {mean_conf:.2f}, {unsure} unsure (< {UNSURE_BELOW})")
    inconsistent = sum(d.judge_order_inconsistent for d in result.decisions)
    table.add_row("judge order-inconsistent", str(inconsistent))
    for stage, seconds in sorted(s.get("stage_seconds", {}).items()):
        table.add_row(f"time: {stage}", f"{seconds:.2f} s")
    console.print(table)
    for warning in s.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def _estimate_text(estimate: dict | None, level: float, digits: int, note: str) -> str:
    """``0.6712 [0.6401, 0.7023] (90%)``; without an estimate, why (never a bare number)."""
    if estimate is None:
        return f"not shown ({note.replace('_', ' ')})" if note else "-"
    return f"{estimate['value']:.{digits}f} [{estimate['low']:.{digits}f}, {estimate['high']:.{digits}f}] ({level:.0%})"
