"""Which pair an annotator gets next: the campaign store's pending pairs, minus what this annotator
skipped, spread over the annotators working at the same time.

A pair shown to an annotator is *leased* to them for ``lease_s`` seconds; while the pair's stored votes
plus the other annotators' live leases reach the votes it needs, the next annotator gets another pair,
so two people do not spend time on a pair that needs one vote. A submitted label replaces its lease
with a *recent vote* stamped with the time it was stored: a pending-pairs read that started before
then may not contain that vote yet, so it is counted for such reads (``snapshot_at``). Leases and skips are kept in the
process (they are a convenience, not data): one replica per campaign, or the same store with several
replicas and slightly weaker spreading. A reload shows the leased pair again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hybridpref.store.api import PendingPair

MAX_SKIPS = 500  # per annotator, oldest forgotten first
RECENT_S = 60.0  # how long a stored vote is remembered (far longer than one pending-pairs read)
WINDOW_SLACK = 16


@dataclass
class _Campaign:
    leases: dict[str, dict[str, float]] = field(default_factory=dict)  # instance -> annotator -> expiry
    recent: dict[str, dict[str, float]] = field(default_factory=dict)  # instance -> annotator -> stored at
    skips: dict[str, OrderedDict[str, None]] = field(default_factory=dict)  # annotator -> instance ids


class Assigner:
    """Thread-safe lease and skip book-keeping; ``choose`` picks from a window of pending pairs."""

    def __init__(self, lease_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_s = lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._campaigns: dict[tuple[str, str], _Campaign] = {}

    def _get(self, vendor: str, campaign: str) -> _Campaign:
        return self._campaigns.setdefault((vendor, campaign), _Campaign())

    def now(self) -> float:
        """The clock ``choose``'s ``snapshot_at`` is read on: take it before reading pending pairs."""
        return self._clock()

    def _expire(self, c: _Campaign, now: float) -> None:
        for instance_id in [i for i, held in c.leases.items() if not any(t > now for t in held.values())]:
            del c.leases[instance_id]
        for instance_id in [i for i, done in c.recent.items() if not any(t > now - RECENT_S for t in done.values())]:
            del c.recent[instance_id]

    def window(self, vendor: str, campaign: str, annotator: str) -> int:
        """How many pending pairs to fetch so that at least one is neither skipped nor leased away."""
        with self._lock:
            c = self._get(vendor, campaign)
            self._expire(c, self._clock())
            # + WINDOW_SLACK: leases other requests take between this call and choose()
            return len(c.skips.get(annotator, ())) + len(c.leases) + len(c.recent) + 1 + WINDOW_SLACK

    def choose(
        self,
        vendor: str,
        campaign: str,
        annotator: str,
        pending: Sequence[PendingPair],
        wanted: str | None = None,
        snapshot_at: float | None = None,
    ) -> PendingPair | None:
        """The pair to show: ``wanted`` if pending for this annotator (after an undo); else the pair this
        annotator holds a lease on; else the first one not skipped whose votes, plus the other
        annotators' leases and their votes stored after ``snapshot_at`` (when ``pending`` was read;
        None = now), leave room; else the first not skipped (an extra vote beats an idle annotator).
        The chosen pair is leased to ``annotator``."""
        with self._lock:
            now = self._clock()
            c = self._get(vendor, campaign)
            self._expire(c, now)
            skipped: OrderedDict[str, None] | dict[str, None] = c.skips.get(annotator, {})
            open_pairs = [p for p in pending if p.instance_id not in skipped or p.instance_id == wanted]
            pick = next((p for p in open_pairs if p.instance_id == wanted), None)
            pick = pick or next((p for p in open_pairs if c.leases.get(p.instance_id, {}).get(annotator, 0) > now), None)
            if pick is None:
                since = now if snapshot_at is None else snapshot_at

                def others(p: PendingPair) -> int:
                    leased = sum(1 for who, t in c.leases.get(p.instance_id, {}).items() if who != annotator and t > now)
                    stored = sum(1 for who, t in c.recent.get(p.instance_id, {}).items() if who != annotator and t >= since)
                    return leased + stored

                pick = next((p for p in open_pairs if p.votes + others(p) < p.votes_needed), None)
            pick = pick or (open_pairs[0] if open_pairs else None)
            if pick is not None:
                for held in c.leases.values():  # one lease per annotator at a time
                    held.pop(annotator, None)
                c.leases.setdefault(pick.instance_id, {})[annotator] = now + self._lease_s
                if wanted is not None and wanted in skipped:
                    del skipped[wanted]
            return pick

    def release(self, vendor: str, campaign: str, annotator: str, instance_id: str) -> None:
        """The annotator let the pair go without a label (skipped it)."""
        with self._lock:
            held = self._get(vendor, campaign).leases.get(instance_id)
            if held is not None:
                held.pop(annotator, None)

    def submitted(self, vendor: str, campaign: str, annotator: str, instance_id: str) -> None:
        """The annotator's label of the pair is stored (call after the store answered)."""
        with self._lock:
            c = self._get(vendor, campaign)
            held = c.leases.get(instance_id)
            if held is not None:
                held.pop(annotator, None)
            c.recent.setdefault(instance_id, {})[annotator] = self._clock()

    def undone(self, vendor: str, campaign: str, annotator: str, instance_id: str) -> None:
        """The annotator's label of the pair was deleted (undo)."""
        with self._lock:
            done = self._get(vendor, campaign).recent.get(instance_id)
            if done is not None:
                done.pop(annotator, None)

    def skip(self, vendor: str, campaign: str, annotator: str, instance_id: str) -> None:
        with self._lock:
            skips = self._get(vendor, campaign).skips.setdefault(annotator, OrderedDict())
            skips[instance_id] = None
            skips.move_to_end(instance_id)
            while len(skips) > MAX_SKIPS:
                skips.popitem(last=False)
        self.release(vendor, campaign, annotator, instance_id)

    def skipped(self, vendor: str, campaign: str, annotator: str) -> int:
        with self._lock:
            return len(self._get(vendor, campaign).skips.get(annotator, ()))

    def clear_skips(self, vendor: str, campaign: str, annotator: str) -> None:
        with self._lock:
            self._get(vendor, campaign).skips.pop(annotator, None)
