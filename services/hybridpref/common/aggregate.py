"""Turn per-order option probabilities into a verdict, and two orders into one label.

Distributions are numpy arrays of shape (5,), indexed ``label - 1`` over
(A_MUCH_BETTER, A_BETTER, TIE, B_BETTER, B_MUCH_BETTER), non-negative, summing to 1. A
distribution "in presented order" becomes one "in stored order" by reversing it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from hybridpref_client.core.instances import Label, PositionMode

# Cap on the confidence of a TIE that comes from the two orders disagreeing.
INCONSISTENT_CONFIDENCE_CAP = 0.5


@dataclass(frozen=True)
class Outcome:
    """Aggregated verdict for one instance, before the judge id / template are attached."""

    label: Label
    confidence: float
    verdict_ab: Label
    verdict_ba: Label
    order_inconsistent: bool


def to_stored_order(dist: np.ndarray, swapped: bool) -> np.ndarray:
    """Map a distribution over presented-order labels to stored order (swap = reverse)."""
    return dist[::-1].copy() if swapped else dist


def one_hot(label: Label) -> np.ndarray:
    """Distribution that puts all mass on ``label`` (for recorded or parsed verdicts)."""
    out = np.zeros(5)
    out[int(label) - 1] = 1.0
    return out


def side_masses(dist: np.ndarray) -> tuple[float, float, float]:
    """(mass on A winning, mass on tie, mass on B winning)."""
    return float(dist[0] + dist[1]), float(dist[2]), float(dist[3] + dist[4])


def verdict(dist: np.ndarray) -> Label:
    """The most likely *side* (A / tie / B), then the stronger of its two levels.

    Picking the side first matters for 3-option templates (A / tie / B), where the "much better"
    levels carry no mass, and keeps "A wins" from being split across two levels.
    """
    a, t, b = side_masses(dist)
    side = int(np.argmax([a, t, b]))
    if side == 1:
        return Label.TIE
    if side == 0:
        return Label.A_MUCH_BETTER if dist[0] > dist[1] else Label.A_BETTER
    return Label.B_MUCH_BETTER if dist[4] > dist[3] else Label.B_BETTER


def single(dist: np.ndarray, swapped: bool) -> Outcome:
    """RANDOM mode: one order judged. Confidence = the winning side's probability mass."""
    v = verdict(dist)
    conf = max(side_masses(dist))
    return Outcome(
        label=v,
        confidence=_clip(conf),
        verdict_ab=Label.UNSPECIFIED if swapped else v,
        verdict_ba=v if swapped else Label.UNSPECIFIED,
        order_inconsistent=False,
    )


def both(dist_ab: np.ndarray, dist_ba: np.ndarray) -> Outcome:
    """BOTH mode: ``dist_ba`` must already be in stored order.

    Orders agree on the winner (A / tie / B) -> the verdict of the averaged distribution, confidence =
    its winning side's mass. Orders disagree -> ``TIE``, flag set, confidence = the averaged
    distribution's TIE mass, capped at 0.5: two confident opposite verdicts (a judge that only follows
    position) give ~0, i.e. "send it to humans".
    """
    v_ab, v_ba = verdict(dist_ab), verdict(dist_ba)
    mean = (dist_ab + dist_ba) / 2.0
    if v_ab.winner != v_ba.winner:
        conf = min(INCONSISTENT_CONFIDENCE_CAP, float(mean[int(Label.TIE) - 1]))
        return Outcome(Label.TIE, _clip(conf), v_ab, v_ba, True)
    label = verdict(mean)
    if label.winner != v_ab.winner:  # averaging can tip A/B/tie ties; keep the agreed side
        label = v_ab
    return Outcome(label, _clip(max(side_masses(mean))), v_ab, v_ba, False)


def random_order_swapped(instance_id: str, seed: int) -> bool:
    """RANDOM mode's order: a seeded hash of the id (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{instance_id}".encode(), digest_size=8).digest()
    return bool(digest[0] & 1)


def orders_for(mode: PositionMode, instance_id: str, seed: int) -> tuple[bool, ...]:
    """Presentation orders to judge: ``(False, True)`` for BOTH, one of them for RANDOM."""
    if mode == PositionMode.RANDOM:
        return (random_order_swapped(instance_id, seed),)
    return (False, True)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))
