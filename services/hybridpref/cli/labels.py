"""``hybridpref labels``: human labels back into a campaign.

    hybridpref labels submit --campaign NAME --input labels.jsonl [--db URL | --router ADDR]
        one JSON object a line: {"id", "label": "A"|"B"|"tie", "annotator", optional "strength" (1 slightly,
        2 clearly; not for a tie), "rationale", "labelled_at" (ISO 8601)}. A malformed row is named by its
        line and field and nothing is sent (exit 2); a label the campaign refuses (an id it never routed)
        is printed by its line and the others are stored (exit 2). Safe to run again: a label already
        stored is "unchanged", a changed one "replaced" (still one vote per annotator and pair).
    hybridpref labels import --campaign NAME --from label-studio EXPORT.json [--db URL | --router ADDR]   (docs/annotators.md)
    hybridpref labels retract --campaign NAME --annotator A [--id ID ...] [--db URL | --router ADDR]
        remove an annotator's labels (all, or those on the given ids): for one found to label at random
        (``hybridpref campaign status`` lists each annotator's agreement with the others); their pairs
        want votes again.

Where the campaign lives (``--db``, ``--router``, ``--vendor``): as for ``hybridpref campaign``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from hybridpref.cli import plain
from hybridpref_client.core.errors import FieldViolation, InvalidInput

EXIT_USAGE = 2
# How many bad rows are listed by line before the rest are only counted.
MAX_LISTED = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    from hybridpref.cli.annotate import add_labels_import
    from hybridpref.cli.campaign import add_target_arguments

    labels = subparsers.add_parser(
        "labels",
        help="human labels back into a campaign (submit, import)",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = labels.add_subparsers(dest="labels_command", required=True)
    submit = sub.add_parser("submit", help="submit a JSONL file of human labels")
    submit.add_argument("--campaign", required=True, help="the campaign the labels are for")
    submit.add_argument("--input", type=Path, required=True, help="JSONL: {id, label, annotator, strength?, rationale?}")
    add_target_arguments(submit)
    add_target_arguments(add_labels_import(sub))
    retract = sub.add_parser("retract", help="remove an annotator's labels (all, or those on --id)")
    retract.add_argument("--campaign", required=True, help="the campaign")
    retract.add_argument("--annotator", required=True, help="the annotator whose labels go")
    retract.add_argument("--id", dest="ids", action="append", default=None, help="only this instance's label (repeatable)")
    add_target_arguments(retract)
    labels.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.labels_command == "retract":
        from hybridpref.cli.campaign import named_fields, open_campaigns

        with open_campaigns(args) as campaigns, named_fields():
            n = campaigns.retract_labels(args.campaign, args.annotator, args.ids)
        print(f"retracted {n} label(s) of {args.annotator!r} from campaign {args.campaign!r}", file=sys.stderr)
        return 0
    if args.labels_command == "import":
        from hybridpref.cli import annotate
        from hybridpref.cli.campaign import named_fields, open_campaigns

        with open_campaigns(args) as campaigns, named_fields():
            return annotate.import_labels(campaigns, args)
    return submit(args)


def read_labels(path: Path) -> tuple[list, list[int]]:
    """(the SDK's ``HumanLabel`` per row, the file line of each); every malformed row named as
    ``line N.field`` in one ``InvalidInput`` (the first :data:`MAX_LISTED`, then a count)."""
    from hybridpref_client.core.instances import iter_json_rows
    from hybridpref_client.messages import label_from_row

    if not path.exists():
        raise InvalidInput(FieldViolation("--input", f"no such file: {path}"))
    labels, lines, violations = [], [], []
    bad_rows = 0
    for lineno, row in iter_json_rows(str(path)):
        try:
            labels.append(label_from_row(row, where=f"line {lineno}"))
            lines.append(lineno)
        except InvalidInput as exc:
            bad_rows += 1
            if bad_rows <= MAX_LISTED:
                violations += exc.violations
    if bad_rows > MAX_LISTED:
        violations.append(FieldViolation("--input", f"{bad_rows - MAX_LISTED} more bad rows not listed"))
    if violations:
        raise InvalidInput(violations)
    if not labels:
        raise InvalidInput(FieldViolation("--input", f"{path} holds no labels"))
    return labels, lines


def submit(args: argparse.Namespace) -> int:
    from hybridpref.cli.campaign import named_fields, open_campaigns

    labels, lines = read_labels(args.input)
    with open_campaigns(args) as campaigns, named_fields():
        results = campaigns.submit_labels(args.campaign, labels)
    counts = Counter(r.status for r in results)
    for r in results:
        if r.status == "rejected":
            print(f"error: {_on_line(r.error, lines)}", file=sys.stderr)
    audits = sum(r.audit and r.status != "rejected" for r in results)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("stored", "replaced", "unchanged", "rejected"))
    print(
        f"{len(labels)} label(s) from {args.input} for campaign {args.campaign!r}: {summary}"
        + (f"; {audits} on LM-routed pairs (kept as audit labels of the judge)" if audits else ""),
        file=sys.stderr,
    )
    return EXIT_USAGE if counts.get("rejected") else 0


def _on_line(error: str, lines: list[int]) -> str:
    """``labels[3].id: ...`` -> ``line 5.id: ...`` (the input file's line of the 4th label)."""
    return re.sub(
        r"^labels\[(\d+)\]", lambda m: f"line {lines[int(m.group(1))]}" if int(m.group(1)) < len(lines) else m.group(0), error
    )
