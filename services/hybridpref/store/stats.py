"""Small statistics of the campaign status: vote majority, Wilson interval, an expected-count interval, and
per-annotator agreement."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from hybridpref.store.api import AnnotatorStats, Interval

Z95 = 1.959963984540054


def majority(counts: Mapping[str, int]) -> str:
    """Final human label of a pair from its vote counts {"A": a, "B": b, "tie": t}: "A" or "B" when it
    has strictly more votes than each other answer, else "tie" (tie votes win, or A and B are level)."""
    a, b, t = counts.get("A", 0), counts.get("B", 0), counts.get("tie", 0)
    if a > b and a > t:
        return "A"
    if b > a and b > t:
        return "B"
    return "tie"


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """Share ``successes / n`` with its Wilson score interval (95% by default); ``None`` when n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def expected_count_interval(probabilities: Sequence[float], z: float = Z95) -> Interval | None:
    """Expected number of successes of independent events with these probabilities (a Poisson-binomial
    count) and a normal-approximation interval: sum p +- z sqrt(sum p (1 - p)), clipped to [0, n].
    Probabilities outside [0, 1] (an expected *gain* may be negative) count at their clipped value in
    the variance only. ``None`` when there are none."""
    if not probabilities:
        return None
    total = float(sum(probabilities))
    variance = sum(min(1.0, max(0.0, p)) * (1 - min(1.0, max(0.0, p))) for p in probabilities)
    half = z * math.sqrt(variance)
    return Interval(total, max(0.0, total - half), min(float(len(probabilities)), total + half))


def annotator_stats(votes: Sequence[Any]) -> list[AnnotatorStats]:
    """:meth:`SqlCampaignStore.annotator_stats` on rows (decision_id, annotator, preference, lm_label)."""
    by_pair: dict[int, Counter[str]] = defaultdict(Counter)
    for v in votes:
        by_pair[v.decision_id][v.preference] += 1
    count: Counter[str] = Counter()
    others: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # annotator -> [agreed, compared]
    with_lm: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for v in votes:
        count[v.annotator] += 1
        if v.preference == "tie":
            continue
        rest = by_pair[v.decision_id].copy()
        rest[v.preference] -= 1
        verdict = majority(rest) if sum(rest.values()) else "tie"
        if verdict != "tie":
            others[v.annotator][0] += verdict == v.preference
            others[v.annotator][1] += 1
        lm = _lm_winner(v.lm_label)
        if lm is not None:
            with_lm[v.annotator][0] += lm == v.preference
            with_lm[v.annotator][1] += 1
    return [
        AnnotatorStats(name, n, wilson(*others.get(name, (0, 0))), wilson(*with_lm.get(name, (0, 0))))
        for name, n in sorted(count.items(), key=lambda item: (-item[1], item[0]))
    ]


def _lm_winner(lm_label: str | None) -> str | None:
    """ "A" / "B" / None (tie or missing) of a stored LM label name."""
    from hybridpref_client.core.instances import Label

    return Label[lm_label].winner if lm_label else None
