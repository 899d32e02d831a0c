"""Deterministic, vectorised selection primitives shared by the strategies.

Every function here is pure: same inputs, same output, ties broken by the lower index.
"""

from __future__ import annotations

import numpy as np


def top_set(priority: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``priority`` values, in ascending index order.

    Ties at the cut go to the lower index; NaN counts as -inf. O(n). Returns (k,) int64.
    """
    p = np.where(np.isnan(priority), -np.inf, priority) if np.isnan(priority).any() else priority
    n = len(p)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    threshold = np.partition(p, n - k)[n - k]
    above = p > threshold
    ties = np.flatnonzero(p == threshold)[: k - int(np.count_nonzero(above))]
    above[ties] = True
    return np.flatnonzero(above).astype(np.int64)


def top_indices(priority: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``priority`` values, ordered by descending priority.

    Ties are broken by the lower index; NaN counts as -inf. O(n + k log k). Returns (k,) int64.
    """
    idx = top_set(priority, k)
    p = np.where(np.isnan(priority), -np.inf, priority)
    # lexsort: last key is primary -> descending priority, then ascending index
    return idx[np.lexsort((idx, -p[idx]))]


def priority_order(priority: np.ndarray) -> np.ndarray:
    """All indices by descending priority, ties by lower index (a full sort; O(n log n))."""
    p = np.where(np.isnan(priority), -np.inf, priority)
    return np.lexsort((np.arange(len(p)), -p)).astype(np.int64)


def density_order(gains: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Order for spending a cost budget: positive gains by gain per unit cost, then the rest
    by gain (so a forced spend on harmful instances picks the least harmful first)."""
    g = np.where(np.isnan(gains), -np.inf, gains)
    positive = g > 0
    key = np.where(positive, g / costs, g)
    # primary: positive first; secondary: key descending; tertiary: index
    return np.lexsort((np.arange(len(g)), -key, ~positive)).astype(np.int64)


def fill_in_order(order: np.ndarray, costs: np.ndarray, limit: float) -> np.ndarray:
    """Walk ``order`` and take each instance whose cost still fits in ``limit``; skip the rest.

    This is the classic greedy knapsack fill. Vectorised: each pass takes the longest prefix
    that fits, then drops candidates that no longer fit; passes are few in practice.
    Returns the taken indices (in ``order``'s order).
    """
    remaining = float(limit)
    cand = np.asarray(order, dtype=np.int64)
    taken: list[np.ndarray] = []
    slack = 1e-9 * max(1.0, abs(remaining))  # absorb float rounding of cumulative sums
    while len(cand) and remaining > 0:
        cand = cand[costs[cand] <= remaining + slack]
        if not len(cand):
            break
        cum = np.cumsum(costs[cand])
        fit = int(np.searchsorted(cum, remaining + slack, side="right"))
        taken.append(cand[:fit])
        remaining -= float(cum[fit - 1])
        cand = cand[fit + 1 :]  # cand[fit] did not fit now and cannot fit later
    return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)
