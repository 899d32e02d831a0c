"""Helpers of the annotation tests: a campaign store with human-routed pairs, the app served by a real
uvicorn on a loopback port, and signed-in HTTP clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from hybridpref.store.api import CampaignSpec, Candidate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VENDOR = "acme"


def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def make_store(tmp_path: Path) -> Any:
    """The campaign store on a fresh SQLite file in ``tmp_path`` (migrated; ``store_url`` names it)."""
    from hybridpref.store.sql import SqlCampaignStore

    return SqlCampaignStore.open(store_url(tmp_path), upgrade=True)


def fixture_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in (FIXTURES / "annotate_pairs.jsonl").read_text(encoding="utf-8").splitlines() if line]


def synthetic_pairs(n: int, prefix: str = "p") -> list[dict[str, str]]:
    """``n`` distinct pairs with ids ``{prefix}-00000``..; texts say which side they are."""
    return [
        {
            "instance_id": f"{prefix}-{i:05d}",
            "prompt": f"Question {i}?",
            "response_a": f"Answer A to {i}.",
            "response_b": f"Answer B to {i}.",
        }
        for i in range(n)
    ]


def seed_campaign(store: Any, name: str, pairs: Sequence[dict[str, str]], votes_per_pair: int = 1, vendor: str = VENDOR) -> None:
    """A count-budget campaign routing every pair to humans (budget = the pair count)."""
    store.create_campaign(
        CampaignSpec(vendor=vendor, name=name, budget_kind="count", budget_total=float(len(pairs)), votes_per_pair=votes_per_pair)
    )
    candidates = [
        Candidate(
            instance_id=p["instance_id"],
            prompt=p["prompt"],
            response_a=p["response_a"],
            response_b=p["response_b"],
            score=1.0 - i / (len(pairs) + 1),
            lm_label="A_BETTER",
            lm_confidence=0.6,
        )
        for i, p in enumerate(pairs)
    ]
    decisions = store.decide_batch(vendor, name, "batch-1", candidates)
    assert all(d.human for d in decisions), "every fixture pair must be routed to humans"


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on an ephemeral loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
