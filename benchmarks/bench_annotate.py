"""Label-submission latency of the annotation page under concurrent annotators.

    python benchmarks/bench_annotate.py                       # 20 annotators x 50 labels, SQLite
    python benchmarks/bench_annotate.py --think-ms 2000         # each annotator reads ~2 s per pair

The real app (`hybridpref annotate`, uvicorn) runs in its own process on a loopback port over a fresh
SQLite campaign store; an httpx async client plays N annotators at once, each signed in with its own
token, each looping: GET / (the next pair) -> think (exponential, mean --think-ms; 0 = a closed loop,
the worst case) -> POST /label (a random point of the scale; the store write) until it has given
--labels labels. Prints p50/p95/p99/max of POST /label (the submission,
target p99 <= 50 ms) and of GET / (the next page), throughput, and checks the store afterwards: one
vote per (pair, annotator), none lost. Seeded (--seed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from hybridpref.store.api import CampaignSpec, Candidate
from hybridpref.store.sql import SqlCampaignStore

VENDOR, CAMPAIGN = "bench", "bench-annotate"
CHOICES = ("A2", "A1", "tie", "B1", "B2")
FORM = re.compile(r'name="instance_id" value="([^"]*)".*?name="shown" value="(AB|BA)"', re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_store(url: str, pairs: int, votes: int, annotators: int) -> list[str]:
    store = SqlCampaignStore.open(url, upgrade=True)
    store.create_campaign(
        CampaignSpec(vendor=VENDOR, name=CAMPAIGN, budget_kind="count", budget_total=float(pairs), votes_per_pair=votes)
    )
    text = "A response with some **Markdown**, a list\n\n- one\n- two\n\nand `code`. " * 4
    for start in range(0, pairs, 500):
        batch = [
            Candidate(
                instance_id=f"b-{i:06d}",
                prompt=f"Prompt {i}: explain something.",
                response_a=f"A {i}. {text}",
                response_b=f"B {i}. {text}",
                score=1.0,
                lm_label="A_BETTER",
            )
            for i in range(start, min(pairs, start + 500))
        ]
        store.decide_batch(VENDOR, CAMPAIGN, f"batch-{start}", batch)
    tokens = [store.create_annotator_token(VENDOR, f"annotator-{k:02d}") for k in range(annotators)]
    store.close()
    return tokens


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:6.1f} ms  p95 {q[94]:6.1f} ms  p99 {q[98]:6.1f} ms  max {ms[-1]:6.1f} ms  (n={len(ms)})"


async def annotator(
    base: str, token: str, labels: int, rng: random.Random, post_s: list[float], get_s: list[float], done: Counter, think_s: float
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/login", data={"token": token})
        assert r.status_code == 303, r.text
        for _ in range(labels):
            t = time.perf_counter()
            page = await client.get("/")
            get_s.append(time.perf_counter() - t)
            m = FORM.search(page.text)
            if m is None:
                return  # nothing left
            form = {"instance_id": m.group(1), "shown": m.group(2), "choice": rng.choice(CHOICES), "rationale": ""}
            if think_s > 0:
                await asyncio.sleep(rng.expovariate(1 / think_s))
            t = time.perf_counter()
            r = await client.post("/label", data=form)
            post_s.append(time.perf_counter() - t)
            assert r.status_code == 303, r.text[:300]
            done[token] += 1


async def run_load(
    base: str, tokens: list[str], labels: int, seed: int, think_s: float = 0.0
) -> tuple[list[float], list[float], float, Counter]:
    post_s: list[float] = []
    get_s: list[float] = []
    done: Counter = Counter()
    t = time.perf_counter()
    await asyncio.gather(
        *(
            annotator(base, tok, labels, random.Random(seed * 1000 + k), post_s, get_s, done, think_s)
            for k, tok in enumerate(tokens)
        )
    )
    return post_s, get_s, time.perf_counter() - t, done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--labels", type=int, default=50, help="labels per annotator")
    ap.add_argument("--votes-per-pair", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2, help="labels per annotator before measuring")
    ap.add_argument("--think-ms", type=float, default=0.0, help="mean think time per pair (0 = closed loop)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-annotate-"))
    url = f"sqlite:///{work / 'store.db'}"
    pairs = args.annotators * (args.labels + args.warmup) // args.votes_per_pair + args.annotators * 2
    tokens = seed_store(url, pairs, args.votes_per_pair, args.annotators)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cli = "import sys; from hybridpref.cli.main import main; sys.exit(main(sys.argv[1:]))"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            cli,
            "annotate",
            "--campaign",
            CAMPAIGN,
            "--port",
            str(port),
            "--db",
            url,
            "--log-level",
            "warning",
        ],
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the annotation page did not start") from None
                time.sleep(0.2)
        asyncio.run(run_load(base, tokens, args.warmup, args.seed + 1))
        cpu0, load0 = cpu_seconds(server.pid), os.getloadavg()[0]
        post_s, get_s, wall, done = asyncio.run(run_load(base, tokens, args.labels, args.seed, args.think_ms / 1000))
        server_cpu = cpu_seconds(server.pid) - cpu0
    finally:
        server.terminate()
        server.wait(timeout=20)

    store = SqlCampaignStore.open(url)
    votes = Counter()
    for _, _, labels in store.returned_labels(VENDOR, CAMPAIGN):
        for label in labels:
            votes[label.annotator] += 1
    per_pair = Counter(c.instance_id for c, _, labels in store.returned_labels(VENDOR, CAMPAIGN) for _ in labels)
    expected = sum(done.values()) + args.annotators * args.warmup
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    print(
        f"{args.annotators} annotators x {args.labels} labels (+{args.warmup} warm-up), think time "
        f"{args.think_ms:.0f} ms, votes per pair {args.votes_per_pair}, {pairs} pairs, SQLite ({url})"
    )
    print(f"POST /label (submission): {percentiles(post_s)}")
    print(f"GET /      (next pair):   {percentiles(get_s)}")
    print(
        f"throughput: {len(post_s) / wall:.0f} labels/s over {wall:.1f} s; server CPU "
        f"{server_cpu * 1000 / max(1, len(post_s)):.1f} ms per label (GET + POST)"
    )
    print(
        f"stored votes {sum(votes.values())} (expected {expected}); pairs over their votes: "
        f"{sum(1 for n in per_pair.values() if n > args.votes_per_pair)}"
    )
    return 0 if sum(votes.values()) == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
