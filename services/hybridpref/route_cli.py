"""``hybridpref route``: route a JSONL batch against a router, or an embedded stack."""

from __future__ import annotations

import re
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from hybridpref.common.errors import FieldViolation, InvalidInput
from hybridpref.common.instances import iter_jsonl
from hybridpref.common.settings import Settings


def cmd_route(args) -> int:
    from rich.console import Console
    from hybridpref_client import RouterClient, RoutingError, write_decisions

    from hybridpref.cli import SAMPLE_BATCH, parse_budget

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
                raise InvalidInput([_to_line(field, text, lines) for field, text in exc.violations]) from None
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print_summary(console, result, judge_name)
    if args.output:
        write_decisions(args.output, result)
        console.print(f"wrote {len(result.decisions)} decisions to {args.output}")
    return 0


def _to_line(field: str, text: str, lines: list[int]) -> FieldViolation:
    """``instances[3].response_a`` -> ``line 5.response_a`` (the input file's line)."""
    match = re.match(r"instances\[(\d+)\](.*)", field)
    if match and int(match.group(1)) < len(lines):
        return FieldViolation(f"line {lines[int(match.group(1))]}{match.group(2)}", text)
    return FieldViolation(field, text)


@contextmanager
def _router(args, console):
    """(router address, name of the judge that labels): the given router, or an embedded stack run in a
    background thread."""
    if args.router:
        yield args.router, f"the judge service behind {args.router}"
        return
    from hybridpref.common.logs import configure_logging
    from hybridpref.stack import BackgroundLoop, start_embedded_stack

    configure_logging("hybridpref-route", args.log_level, "console")
    overrides = {"judge_backend": args.judge_backend} if args.judge_backend else {}
    settings = Settings(**overrides)
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
    if settings.judge_backend == "replay" and replay_judge:
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
    table.add_row("to humans", str(s.get("human_count", 0)))
    table.add_row("to LM judge", str(s.get("lm_count", 0)))
    table.add_row("human cost", f"{s.get('human_cost', 0.0):.1f}")
    for key, label in (("predicted_score", "predicted score (chosen)"), ("predicted_all_human", "predicted, all human"),
                       ("predicted_all_lm", "predicted, all LM"), ("predicted_random", "predicted, random same budget")):
        if key in s:
            table.add_row(label, f"{s[key]:.4f}")
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
