"""``hybridpref route``: route a JSONL batch against a running router, or an embedded stack.

    hybridpref route --input in.jsonl --budget 0.25 [--router HOST:PORT] [--output out.jsonl]

Budgets: a fraction (``0.25``), a count (``count:100``), a total cost (``cost:500``) or ``auto``. Bad rows are
named by their line in the input file.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import iter_jsonl
from hybridpref.common.fields import rename_instance
from hybridpref.server.settings import Settings

SAMPLE_BATCH = Path(__file__).resolve().parents[3] / "samples" / "sample_batch.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    route = subparsers.add_parser("route", help="route a JSONL batch", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
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
    route.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from hybridpref_client import RouterClient, RoutingError, write_decisions

    path = args.input or SAMPLE_BATCH
    if not Path(path).exists():
        raise InvalidInput(FieldViolation("--input", f"no such file: {path}"))
    rows = list(iter_jsonl(str(path)))
    lines = [lineno for lineno, _ in rows]
    instances = [inst for _, inst in rows]
    budget = parse_budget(args.budget)
    console = Console(stderr=True)
    console.print(f"routing {len(instances)} instances from {path} (budget {args.budget})")
    with _router(args, console) as (address, judge_name), RouterClient(address, timeout_s=args.timeout) as client:
        try:
            with _progress(console, len(instances)) as advance:
                result = client.route_stream(instances, budget, args.strategy, args.seed,
                                             replay_judge=args.replay_judge, on_progress=advance)
        except RoutingError as exc:
            if exc.violations:
                named = [_to_line(field, text, lines) for field, text in exc.violations]
                if exc.violation_total > len(named):  # the router lists the first ones only
                    named.append(FieldViolation("--input", f"{exc.violation_total - len(named)} more bad fields not listed"))
                raise InvalidInput(named) from None
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print_summary(console, result, judge_name)
    if args.output:
        write_decisions(args.output, result)
        console.print(f"wrote {len(result.decisions)} decisions to {args.output}")
    return 0


def parse_budget(text: str):
    """``0.25`` / ``25%`` -> fraction, ``count:100`` -> count, ``cost:500`` -> cost, ``auto``: an explicit
    ``hybridpref_client.Budget`` (the SDK deprecates bare numbers)."""
    from hybridpref_client import Budget

    try:
        return Budget.parse(text)
    except InvalidInput as exc:
        if exc.violations[0].field != "budget":  # readable but out of range: the field as the router names it
            raise
        raise InvalidInput(FieldViolation("--budget", f"cannot read {text!r}; use 0.25, 25%, count:100, cost:500 or auto")) from None


def _to_line(field: str, text: str, lines: list[int]) -> FieldViolation:
    """``instances[3].response_a`` -> ``line 5.response_a`` (the input file's line)."""
    return FieldViolation(rename_instance(field, lambda i: f"line {lines[i]}" if i < len(lines) else None), text)


@contextmanager
def _router(args, console):
    """(router address, name of the judge that labels): the given router, or an embedded stack run in a
    background thread."""
    if args.router:
        yield args.router, f"the judge service behind {args.router}"
        return
    from hybridpref.server.logs import configure_logging
    from hybridpref.cli.stack import BackgroundLoop, start_embedded_stack

    configure_logging("hybridpref-route", args.log_level, "console")
    settings = Settings(judge={"backend": args.judge_backend} if args.judge_backend else {})
    background = BackgroundLoop()
    console.print("starting an embedded stack (tagger, judge, predictor, router) on loopback; loading models...")
    stack = background.run(start_embedded_stack(settings))
    try:
        yield stack.router_address, _judge_name(settings, args.replay_judge)
    finally:
        background.run(stack.stop())
        background.close()


def _judge_name(settings: Settings, replay_judge: str) -> str:
    """``judge_id`` of the judge an embedded stack runs, e.g. ``learned:hybridpref-judge-v1``."""
    from hybridpref.judge.servicer import build_judge

    name = build_judge(settings).judge_id  # builds only; no model is loaded a second time
    if settings.judge.backend == "replay" and replay_judge:
        name = f"replay:{replay_judge}"
    return name


@contextmanager
def _progress(console, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        sent = progress.add_task("sent", total=total)
        received = progress.add_task("routed", total=total)

        def advance(phase: str, n: int) -> None:
            if phase == "retry":  # the SDK retries the whole stream: counts start again
                progress.reset(sent, total=total)
                progress.reset(received, total=total)
                return
            progress.advance(sent if phase == "sent" else received, n)

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
    level = s.get("interval_level", 0.0)
    for name, label in (("chosen", "chosen"), ("all_human", "all human"), ("all_lm", "all LM"), ("random", "random, same budget")):
        mix = s.get("mixes", {}).get(name)
        if mix is None:
            continue
        table.add_row(f"predicted score, {label}", _estimate_text(mix.get("predicted_score"), level, 4, mix.get("score_note", "")))
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
