"""Pair assignment of the annotation page (hybridpref.annotate.assign) on a controlled clock: leases
spread concurrent annotators, a stale pending-pairs read does not hand out a pair whose last vote was
just stored, skips and the pair an undo brings back."""

from __future__ import annotations

from hybridpref.annotate.assign import WINDOW_SLACK, Assigner
from hybridpref.store.api import PendingPair


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pairs(n: int, votes: int = 0, needed: int = 1) -> list[PendingPair]:
    return [PendingPair(f"p{i}", "q", "a", "b", votes, needed) for i in range(n)]


def test_leases_spread_annotators_and_expire() -> None:
    clock = Clock()
    a = Assigner(lease_s=60, clock=clock)
    window = pairs(3)
    assert a.choose("v", "c", "x", window).instance_id == "p0"
    assert a.choose("v", "c", "y", window).instance_id == "p1"
    assert a.choose("v", "c", "x", window).instance_id == "p0", "a reload keeps the leased pair"
    assert a.window("v", "c", "z") == 3 + WINDOW_SLACK
    clock.t += 61
    assert a.choose("v", "c", "z", window).instance_id == "p0", "an expired lease frees the pair"


def test_two_votes_needed_lets_two_annotators_share_a_pair() -> None:
    a = Assigner(clock=Clock())
    window = pairs(2, needed=2)
    assert [a.choose("v", "c", who, window).instance_id for who in ("x", "y", "z")] == ["p0", "p0", "p1"]


def test_stale_read_does_not_hand_out_a_pair_just_completed() -> None:
    clock = Clock()
    a = Assigner(clock=clock)
    window = pairs(2)
    assert a.choose("v", "c", "x", window).instance_id == "p0"
    snapshot = a.now()  # y's pending-pairs read starts: p0 has no vote yet in it
    clock.t += 0.01
    a.submitted("v", "c", "x", "p0")  # x's label lands; x's lease is gone
    clock.t += 0.01
    assert a.choose("v", "c", "y", window, snapshot_at=snapshot).instance_id == "p1"
    # A read that started after the vote was stored does not list p0 any more; nothing is held back.
    assert a.choose("v", "c", "z", pairs(1, votes=0, needed=2), snapshot_at=a.now()).instance_id == "p0"


def test_skips_and_the_pair_an_undo_brings_back() -> None:
    a = Assigner(clock=Clock())
    window = pairs(3)
    a.skip("v", "c", "x", "p0")
    assert a.choose("v", "c", "x", window).instance_id == "p1"
    assert a.skipped("v", "c", "x") == 1
    assert a.choose("v", "c", "x", window, wanted="p0").instance_id == "p0", "asked for explicitly"
    assert a.skipped("v", "c", "x") == 0
    a.skip("v", "c", "x", "p0")
    a.skip("v", "c", "x", "p1")
    a.skip("v", "c", "x", "p2")
    assert a.choose("v", "c", "x", window) is None
    a.clear_skips("v", "c", "x")
    assert a.choose("v", "c", "x", window).instance_id == "p0"


def test_when_everything_is_leased_an_extra_vote_beats_idling() -> None:
    a = Assigner(clock=Clock())
    window = pairs(1)
    assert a.choose("v", "c", "x", window).instance_id == "p0"
    assert a.choose("v", "c", "y", window).instance_id == "p0"
