"""Benchmark of the campaign store (issue 20) on SQLite and PostgreSQL.

Per engine, on a fresh database:

1. ``decide_batch``: ``--instances`` synthetic candidates (texts of ~200 characters, signals, features)
   in batches of ``--batch``, one campaign with a 25% count budget and the stream size announced; the
   figure is instances/s over the whole stream (policy calibration on the stored scores included).
2. ``submit_labels``: one label for every human-routed pair, in requests of ``--label-request`` labels,
   then the same labels again (all ``unchanged``: the idempotent path), then a second annotator;
   labels/s per pass. Target >= 5,000 labels/s.
3. export: ``export_rows`` of every instance as ``trl`` rows, alone and written to JSONL and Parquet.
   Target <= 5 s for 100,000 rows.
4. the annotators' hand-off: every pending pair read 1,000 a page by cursor (``ListPendingPairs``, the Label
   Studio / Argilla export), when every human pair is pending and again when none is (the pages scan).

SQLite: one file in a temporary folder (WAL, synchronous=FULL). PostgreSQL: a throwaway server
(tests/support/postgres.py) with its durable defaults (fsync on, synchronous commit), on loopback.

    .venv/bin/python benchmarks/bench_store.py                      # 100,000 instances, both engines
    .venv/bin/python benchmarks/bench_store.py --instances 10000 --engines sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.postgres import PostgresServer, find_bin_dir  # noqa: E402
from support.store_data import candidates  # noqa: E402

from hybridpref.store.api import CampaignSpec, HumanLabel  # noqa: E402
from hybridpref.store.export import write_export  # noqa: E402
from hybridpref.store.sql import SqlCampaignStore  # noqa: E402


def run(url: str, args) -> dict[str, float]:
    store = SqlCampaignStore.open(url, upgrade=True)
    n, size = args.instances, args.batch
    store.create_campaign(CampaignSpec("bench", "c", "count", n // 4, expected_instances=n))
    batches = [candidates("i", size, b, start=b * size, text_len=200) for b in range(n // size)]
    started = time.perf_counter()
    human: list[str] = []
    for b, batch in enumerate(batches):
        human += [d.instance_id for d in store.decide_batch("bench", "c", f"b{b}", batch) if d.human]
    decide_s = time.perf_counter() - started
    resend = time.perf_counter()
    store.decide_batch("bench", "c", "b0", batches[0])  # a re-sent batch: all replayed
    resend_s = time.perf_counter() - resend
    out = {
        "instances": n,
        "decide_s": decide_s,
        "decide_per_s": n / decide_s,
        "replayed_batch_s": resend_s,
        "human_routed": len(human),
    }
    out.update(page_pending(store, "pending", len(human)))  # every human pair pending: the annotators' hand-off
    step = args.label_request
    for name, annotator, pref in (
        ("labels_new", "a1", "A"),
        ("labels_unchanged", "a1", "A"),
        ("labels_second_annotator", "a2", "B"),
    ):
        labels = [HumanLabel(i, annotator, pref, strength=1) for i in human]
        started = time.perf_counter()
        for k in range(0, len(labels), step):
            results = store.submit_labels("bench", "c", labels[k : k + step])
            assert all(r.status != "rejected" for r in results)
        elapsed = time.perf_counter() - started
        out[f"{name}_per_s"] = len(labels) / elapsed
    out.update(page_pending(store, "pending_done", 0))  # every pair labelled: the pages scan and find none
    started = time.perf_counter()
    rows = sum(1 for _ in store.export_rows("bench", "c", "trl"))
    out["export_rows_s"] = time.perf_counter() - started
    assert rows == n, rows
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("jsonl", "parquet"):
            started = time.perf_counter()
            write_export(store.export_rows("bench", "c", "trl"), Path(tmp) / f"c.{suffix}", "trl")
            out[f"export_{suffix}_s"] = time.perf_counter() - started
            out[f"export_{suffix}_mb"] = (Path(tmp) / f"c.{suffix}").stat().st_size / 2**20
    started = time.perf_counter()
    status = store.status("bench", "c")
    out["status_s"] = time.perf_counter() - started
    out["spent"] = status.campaign.spent
    store.close()
    return out


def page_pending(store, name: str, expected: int) -> dict[str, float]:
    """Every pending pair, 1,000 a page by cursor (what ``ListPendingPairs`` and the Label Studio export do)."""
    started = time.perf_counter()
    pairs, after = 0, ""
    while True:
        page = store.pending_pairs("bench", "c", "", 1000, after=after)
        pairs += len(page)
        if len(page) < 1000:
            break
        after = page[-1].instance_id
    elapsed = time.perf_counter() - started
    assert pairs == expected, (pairs, expected)
    return {f"{name}_pairs": pairs, f"{name}_s": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--label-request", type=int, default=1_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} cpus={os.cpu_count()} python={platform.python_version()} "
        f"load={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for engine in args.engines.split(","):
        if engine == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                result = run(f"sqlite:///{tmp}/bench.db", args)
        else:
            bin_dir = find_bin_dir()
            if bin_dir is None:
                print("postgresql: no server binaries, skipped", flush=True)
                continue
            server = PostgresServer(bin_dir, durable=True).start()
            try:
                result = run(server.create_database("bench"), args)
            finally:
                server.stop()
        print(
            json.dumps({"engine": engine, **{k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
