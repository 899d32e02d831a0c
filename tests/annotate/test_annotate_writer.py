"""Group commit of label submissions (hybridpref.annotate.writer) on the real SQLite store: concurrent
submissions share transactions, each gets its own result, and a failed commit fails all its requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.annotate import VENDOR, make_store, seed_campaign, synthetic_pairs

from hybridpref.annotate.writer import LabelWriter
from hybridpref.store.api import HumanLabel
from hybridpref_client.core.errors import NotFound


async def test_concurrent_submissions_share_commits(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    seed_campaign(store, "c", synthetic_pairs(40), votes_per_pair=1)
    writer = LabelWriter(store.submit_labels, "c")
    labels = [HumanLabel(f"p-{i:05d}", f"ann-{i % 7}", "A" if i % 2 else "B", 1 + i % 2, source="annotate") for i in range(40)]
    labels.append(HumanLabel("p-00000", "ann-0", "B", 1, source="annotate"))  # a repeat: one vote
    labels.append(HumanLabel("nope", "ann-0", "B", 1, source="annotate"))  # not in the campaign
    results = await asyncio.gather(*(writer.submit(VENDOR, label) for label in labels))
    assert [r.instance_id for r in results] == [x.instance_id for x in labels]
    assert [r.status for r in results] == ["stored"] * 40 + ["unchanged", "rejected"]
    assert writer.commits < 10, f"{writer.commits} commits for 42 concurrent submissions"
    stored = {
        (c.instance_id, x.annotator): (x.preference, x.strength) for c, _, xs in store.returned_labels(VENDOR, "c") for x in xs
    }
    assert stored == {(x.instance_id, x.annotator): (x.preference, x.strength) for x in labels[:40]}


async def test_failed_commit_fails_every_request_in_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    writer = LabelWriter(store.submit_labels, "no-such-campaign")
    outcomes = await asyncio.gather(
        *(writer.submit(VENDOR, HumanLabel(f"i{i}", "a", "A", 1)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, NotFound) for o in outcomes)
    # The writer keeps working after a failure.
    with pytest.raises(NotFound):
        await writer.submit(VENDOR, HumanLabel("i0", "a", "A", 1))
