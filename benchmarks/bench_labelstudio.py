"""The Label Studio round trip at scale: N human-routed pairs exported, annotated through a real Label
Studio server's API, exported back and imported; counts labels, duplicates and flipped orientations.

    python benchmarks/bench_labelstudio.py              # 1,000 tasks, one annotator each
    python benchmarks/bench_labelstudio.py --n 200 --annotators 2

Needs the Label Studio tools venv (``python3 scripts/dev.py setup``). Each pair carries "(better)" on a
seeded random side; the simulated annotators read each task as Label Studio serves it and pick that
side (every 7th pair a tie), so a flip anywhere in export -> Label Studio -> import shows up as a
stored preference on the wrong side. Prints the time of each step and the three counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import labelstudio as ls_server  # noqa: E402  (tests/support: the server fixture)
from support.annotate import VENDOR, make_store, seed_campaign, store_url  # noqa: E402

from hybridpref.cli.main import main as cli_main  # noqa: E402

CAMPAIGN = "ls-bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="pairs (tasks); at most 1,000 per export")
    ap.add_argument("--annotators", type=int, default=1, help="votes per pair (each a Label Studio user)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reason = ls_server.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    rng = random.Random(args.seed)
    pairs = []
    for i in range(args.n):
        better = rng.choice("AB")
        pairs.append(
            {
                "instance_id": f"lsb-{i:05d}",
                "prompt": f"Question {i}?",
                "response_a": f"Answer A {i}" + (" (better)" if better == "A" else ""),
                "response_b": f"Answer B {i}" + (" (better)" if better == "B" else ""),
            }
        )
    store = make_store(work)
    seed_campaign(store, CAMPAIGN, pairs, votes_per_pair=args.annotators)
    db = store_url(work)
    t0 = time.perf_counter()
    tasks_path = work / "tasks.json"
    assert (
        cli_main(
            [
                "campaign",
                "export",
                CAMPAIGN,
                "--vendor",
                VENDOR,
                "--format",
                "label-studio",
                "--output",
                str(tasks_path),
                "--db",
                db,
            ]
        )
        == 0
    )
    t_export = time.perf_counter() - t0
    emails = [f"annotator{k}@example.com" for k in range(args.annotators)]
    votes = [
        {"annotator": e, "instance_id": p["instance_id"], "rule": "tie" if i % 7 == 3 else "better", "strength": 1 + (i + k) % 2}
        for i, p in enumerate(pairs)
        for k, e in enumerate(emails)
    ]
    plan = {
        "title": CAMPAIGN,
        "label_config": tasks_path.with_suffix(".xml").read_text(),
        "maximum_annotations": args.annotators,
        "tasks": json.loads(tasks_path.read_text()),
        "annotators": emails,
        "votes": votes,
    }
    t0 = time.perf_counter()
    with ls_server.label_studio(work) as server:
        t_start = time.perf_counter() - t0
        result = server.run_driver(plan, work, timeout=7200)
    (work / "export.json").write_text(json.dumps(result["export"]))
    (work / "users.json").write_text(json.dumps(result["users"]))
    t0 = time.perf_counter()
    code = cli_main(
        [
            "labels",
            "import",
            str(work / "export.json"),
            "--campaign",
            CAMPAIGN,
            "--vendor",
            VENDOR,
            "--from",
            "label-studio",
            "--users",
            str(work / "users.json"),
            "--db",
            db,
        ]
    )
    t_import = time.perf_counter() - t0

    better = {p["instance_id"]: "A" if "(better)" in p["response_a"] else "B" for p in pairs}
    want = {(v["instance_id"], v["annotator"]): "tie" if v["rule"] == "tie" else better[v["instance_id"]] for v in votes}
    rows = [(c.instance_id, x.annotator, x.preference) for c, _, xs in store.returned_labels(VENDOR, CAMPAIGN) for x in xs]
    seen = Counter((i, a) for i, a, _ in rows)
    flipped = sum(1 for i, a, pref in rows if want.get((i, a)) != pref)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.n} tasks x {args.annotators} annotator(s): export {t_export:.2f} s, Label Studio start {t_start:.1f} s, "
        f"driver {json.dumps({k: round(s, 1) for k, s in result['seconds'].items()})}, import {t_import:.2f} s "
        f"(exit {code})"
    )
    print(
        f"labels stored {len(rows)} of {len(votes)}; duplicates {sum(n - 1 for n in seen.values())}; "
        f"missing {len(set(want) - set(seen))}; flipped orientations {flipped}"
    )
    return 0 if (len(rows), flipped, code) == (len(votes), 0, 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
