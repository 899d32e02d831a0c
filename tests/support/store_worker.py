"""A child process for the store's fault and concurrency tests (run as ``python store_worker.py MODE ...``).

``decide URL VENDOR CAMPAIGN PREFIX BATCHES SIZE SEED``: print {"ready": true}, wait for a line on stdin,
then decide ``BATCHES`` batches of ``SIZE`` new ids ``PREFIX<k>`` and print one JSON line per committed batch: {"batch", "human": [ids routed to humans],
"t": commit time}.

``write URL VENDOR CAMPAIGN``: forever, decide a batch of 5 new ids, print ``{"ack": "decide", "ids": [...]}``
after its commit, then label them (annotator ``w``) and print ``{"ack": "labels", "ids": [...]}`` after
that commit. The test kills it with SIGKILL at some point and checks that every acknowledged row is
there.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridpref.store.api import HumanLabel  # noqa: E402
from hybridpref.store.sql import SqlCampaignStore  # noqa: E402
from support.store_data import candidates  # noqa: E402


def decide(url: str, vendor: str, name: str, prefix: str, batches: int, size: int, seed: int) -> None:
    store = SqlCampaignStore.open(url)
    prepared = [candidates(prefix, size, seed + b, start=b * size) for b in range(batches)]
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # "go": the test starts both routers at once
    for b, batch in enumerate(prepared):
        decisions = store.decide_batch(vendor, name, f"{prefix}b{b}", batch)
        print(json.dumps({"batch": b, "human": [d.instance_id for d in decisions if d.human], "t": time.time()}), flush=True)


def write(url: str, vendor: str, name: str) -> None:
    store = SqlCampaignStore.open(url)
    k = 0
    while True:
        batch = candidates("k", 5, k, start=5 * k)
        store.decide_batch(vendor, name, f"kb{k}", batch)
        ids = [c.instance_id for c in batch]
        print(json.dumps({"ack": "decide", "ids": ids}), flush=True)
        results = store.submit_labels(vendor, name, [HumanLabel(i, "w", "A" if j % 2 else "B") for j, i in enumerate(ids)])
        assert all(r.status == "stored" for r in results), results
        print(json.dumps({"ack": "labels", "ids": ids}), flush=True)
        k += 1


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "decide":
        decide(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]))
    elif mode == "write":
        write(*args[:3])
    else:
        raise SystemExit(f"unknown mode {mode}")
