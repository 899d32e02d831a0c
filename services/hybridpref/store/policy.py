"""The campaign spending policy: which instances of one batch get a human label.

A campaign has one total budget (human labels, or cost units) for a stream of batches whose number
and sizes are not known in advance. :func:`plan_batch` is a pure function of the batch, the scores the
campaign has seen before it and what is left of the budget; the store calls it inside the transaction
that holds the campaign's lock, so two routers can never spend the same units.

How one batch is planned (n instances, scores ``s``, units ``u``: 1 each for a count budget, the
instance's cost for a cost budget):

1. **Pace.** ``R`` = instances still expected, this batch included: ``expected_instances - seen``,
   at least ``n``. Without ``expected_instances`` the batch is treated as the rest of the stream
   (``R = n``). The target fraction is ``f = budget_left / (R * mean(u))``, clipped to [0, 1].
2. **Threshold.** When more instances are expected after this batch, the threshold ``t`` is the score
   above which a fraction ``f`` of *every score the campaign has seen* lies (this batch's scores plus
   the campaign's sample of earlier ones: all of them up to :data:`SAMPLE_SIZE`, then a uniform
   random sample of that size kept by :func:`update_sample`, each sampled score weighing for the
   earlier scores it stands for). The batch's instances above ``t`` are paced for a human label; instances exactly at
   ``t`` are taken in the share that makes the fraction exact (ties are common: e.g. every instance
   the judge gave no verdict on may carry the same score), picked at random. A batch richer in high
   scores than the history gets more humans, a poorer one fewer; the next batch's ``f`` absorbs the
   difference, so spending tracks the stream.
   When the batch is the rest of the stream, every instance is eligible and the budget left is spent
   on it, best scores first: the campaign lands on its total.
3. **Explore.** A share ``exploration_share`` of the paced units goes to instances drawn uniformly at
   random among those the score did not pick (unbiased labels for refits, issue 19); the rest goes
   to the best scores. For a count budget the number of exploration picks is rounded at random
   (floor, plus one with the fractional part's probability), so the share holds on average.
4. **Cap.** Units are taken greedily (an instance that does not fit in what is left is skipped, a
   cheaper one may still fit), so the total spent never exceeds the campaign's budget.

Every random choice uses a generator seeded from (campaign id, batch id) (:func:`batch_seed`): a retried
batch on the same database state gets the same decisions.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Slack for float sums of cost units: a plan never spends more than budget_left + EPS.
EPS = 1e-9
# Scores kept per campaign for the threshold's calibration: a uniform random sample of every score seen
# (exact below this size). 8,192 scores put the calibrated fraction within about +-0.5% (one standard
# error at f = 0.25); the next batch's pacing absorbs the error, and the last batch lands exactly.
SAMPLE_SIZE = 8_192


@dataclass(frozen=True)
class BatchPlan:
    """What :func:`plan_batch` decided for a batch of n instances.

    ``human`` (n,) bool: routed to humans; ``exploration`` (n,) bool: the subset routed by the random
    share; ``threshold``: the calibrated score threshold (``-inf`` when every instance was eligible,
    ``inf`` when none was); ``fraction``: the target fraction ``f``; ``spend``: units reserved (sum of
    ``u`` over ``human``)."""

    human: np.ndarray
    exploration: np.ndarray
    threshold: float
    fraction: float
    spend: float
    final: bool


def batch_seed(campaign_id: int, batch_id: str) -> int:
    """64-bit seed of a batch's random choices, derived from the campaign and the batch id."""
    digest = hashlib.sha256(f"{campaign_id}\x00{batch_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan_batch(
    scores: np.ndarray,
    costs: np.ndarray,
    *,
    history: np.ndarray,
    budget_kind: Literal["count", "cost"],
    budget_left: float,
    seen: int,
    expected_instances: int | None,
    exploration_share: float,
    seed: int,
) -> BatchPlan:
    """Plan one batch (see the module docstring for the policy).

    ``scores`` (n,) finite floats, higher = more worth a human label; ``costs`` (n,) positive floats
    (ignored for a count budget, where each human label is one unit); ``history`` (m,) the scores of
    the campaign's earlier decisions (their :func:`update_sample` sample once there are many);
    ``seen`` the number of earlier decisions; ``budget_left`` units not yet reserved.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    units = np.ones(n) if budget_kind == "count" else np.asarray(costs, dtype=np.float64)
    none = np.zeros(n, dtype=bool)
    remaining = n if expected_instances is None else max(expected_instances - seen, n)
    final = remaining <= n
    if n == 0 or budget_left <= EPS or budget_left + EPS < float(units.min()):
        return BatchPlan(none, none.copy(), math.inf, 0.0, 0.0, final=final)
    rng = np.random.default_rng(seed)
    fraction = float(min(1.0, budget_left / (remaining * float(units.mean()))))
    if final:
        paced, threshold = np.ones(n, dtype=bool), -math.inf
    else:
        paced, threshold = _paced(scores, np.asarray(history, dtype=np.float64), seen, fraction, rng)
    allot = min(float(units[paced].sum()), budget_left)
    exploit_units, explore_units, n_explore = _split(allot, exploration_share, budget_kind, rng)
    order = np.lexsort((np.arange(n), -scores))  # best score first, ties by position
    human = _take(order[paced[order]], units, exploit_units, none.copy())
    exploration = none.copy()
    if explore_units > EPS:
        pool = np.flatnonzero(~human)
        picks = rng.permutation(pool)
        if n_explore is not None:
            picks = picks[:n_explore]
        exploration = _take(picks, units, explore_units, exploration)
        human |= exploration
    spend = float(units[human].sum())
    return BatchPlan(human, exploration, threshold, fraction, spend, final)


def update_sample(sample: np.ndarray, seen: int, scores: np.ndarray, seed: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """The campaign's score sample after a batch: reservoir sampling (Algorithm R) over the stream, so
    that it stays a uniform random sample of all ``seen + len(scores)`` scores, of at most ``size``.

    ``sample``: the sample of the ``seen`` earlier scores (all of them while ``seen <= size``)."""
    scores = np.asarray(scores, dtype=np.float64)
    fill = max(0, min(size - len(sample), len(scores)))
    out = np.concatenate([np.asarray(sample, dtype=np.float64), scores[:fill]])
    rest = scores[fill:]
    if len(rest):
        rng = np.random.default_rng([seed, 1])  # its own stream: the batch's routing draws stay as they are
        position = seen + fill + np.arange(len(rest))  # 0-based index of each score in the stream
        slot = np.floor(rng.random(len(rest)) * (position + 1)).astype(np.int64)
        keep = slot < size
        out[slot[keep]] = rest[keep]  # repeated slots: the later score wins, as in the sequential algorithm
    return out


def _paced(
    scores: np.ndarray, history: np.ndarray, seen: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Batch instances whose score passes the threshold calibrated on history + batch, and the threshold.

    Each history score stands for ``seen / len(history)`` scores of the stream (1 while the sample holds
    every score), each batch score for itself: a large batch does not outweigh a long stream."""
    weight_history = seen / len(history) if len(history) else 0.0
    calib = np.concatenate([history, scores])
    weights = np.concatenate([np.full(len(history), weight_history), np.ones(len(scores))])
    total = float(weights.sum())
    want = fraction * total
    if want <= 0:
        return np.zeros(len(scores), dtype=bool), math.inf
    if want >= total:
        return np.ones(len(scores), dtype=bool), -math.inf
    order = np.argsort(-calib, kind="stable")
    reached = int(np.searchsorted(np.cumsum(weights[order]), want - EPS))  # first rank whose weight covers want
    threshold = float(calib[order[min(reached, len(order) - 1)]])
    above = float(weights[calib > threshold].sum())
    equal = float(weights[calib == threshold].sum())
    share_equal = min(1.0, max(0.0, (want - above) / equal))
    paced = scores > threshold
    tied = np.flatnonzero(scores == threshold)
    if len(tied):
        k = _round_random(share_equal * len(tied), rng)
        paced[rng.permutation(tied)[:k]] = True
    return paced, threshold


def _split(allot: float, share: float, budget_kind: str, rng: np.random.Generator) -> tuple[float, float, int | None]:
    """(exploit units, explore units, number of explore picks for a count budget) of an allotment."""
    if share <= 0 or allot <= EPS:
        return allot, 0.0, 0 if budget_kind == "count" else None
    if budget_kind == "count":
        n_explore = min(_round_random(share * allot, rng), int(round(allot)))
        return allot - n_explore, float(n_explore), n_explore
    return allot * (1 - share), allot * share, None


def _round_random(x: float, rng: np.random.Generator) -> int:
    """floor(x), plus one with probability frac(x): unbiased rounding."""
    base = math.floor(x)
    return base + int(rng.random() < x - base)


def _take(candidates: np.ndarray, units: np.ndarray, limit: float, chosen: np.ndarray) -> np.ndarray:
    """Mark ``candidates`` in order while their units fit in ``limit`` (skip one that does not fit)."""
    left = limit
    for i in candidates:
        if units[i] <= left + EPS:
            chosen[i] = True
            left -= units[i]
            if left <= EPS:
                break
    return chosen
