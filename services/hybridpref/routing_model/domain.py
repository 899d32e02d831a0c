"""The domain a bundle was built on, and how far a batch is from it (``domain.json``).

A batch is described by the means of a few text features that every router computes without a
tagger model (columns of :func:`hybridpref.routing_model.correction.correction_features`: log lengths,
length ratio, word overlap). Per training pool the bundle stores their mean and standard deviation.

``distance(batch, pool) = max over features |mean_batch - mean_pool| / sd_pool`` (the largest
standardised mean difference: an effect size, so it does not grow with the batch size), and the
batch's distance to a bundle = the minimum over the pools the PPM was trained on. The batch is in
the PPM's domain when that distance is <= ``threshold``, calibrated on held-out pools: above the
distances of in-domain batches (95th percentile over random batches of the training pool) and below
those of held-out pools whose predicted-vs-measured Spearman was < 0.3 (for a PPM trained on several
pools, each of them held out in turn: its leave-one-pool-out Spearman at its distance to the others).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybridpref.routing_model.correction import FEATURE_NAMES

DOMAIN_FEATURES: tuple[str, ...] = ("log_len_shorter", "log_len_longer", "log_prompt_len", "abs_log_len_ratio", "word_overlap")
DISTANCE = "max_abs_standardised_mean_difference"
_COLS = [FEATURE_NAMES.index(f) for f in DOMAIN_FEATURES]


def pool_stats(features: np.ndarray) -> dict[str, Any]:
    """Mean / sd (per :data:`DOMAIN_FEATURES`) of a pool's correction-feature matrix (n, F)."""
    x = np.asarray(features, dtype=np.float64)[:, _COLS]
    return {"mean": x.mean(0).tolist(), "sd": np.maximum(x.std(0), 1e-6).tolist(), "rows": int(len(x))}


def distance(features: np.ndarray, stats: Mapping[str, Any]) -> float:
    """Largest standardised mean difference between a batch (n, F) and one pool's ``stats``."""
    x = np.asarray(features, dtype=np.float64)[:, _COLS]
    if not len(x):
        return float("inf")
    return float(np.max(np.abs(x.mean(0) - np.asarray(stats["mean"])) / np.asarray(stats["sd"])))


def batch_distance(features: np.ndarray, domain: Mapping[str, Any]) -> tuple[float, bool]:
    """(distance to the nearest PPM training pool, in the PPM's domain) for a batch's features."""
    d = min(distance(features, domain["pools"][p]) for p in domain["ppm_pools"])
    return d, bool(d <= float(domain["threshold"]))


def in_pool_distances(features: np.ndarray, batch: int, draws: int, seed: int) -> np.ndarray:
    """Distances of ``draws`` random ``batch``-row subsets of a pool to the pool itself."""
    rng = np.random.default_rng(seed)
    stats = pool_stats(features)
    n = len(features)
    return np.array([distance(features[rng.choice(n, min(batch, n), replace=False)], stats) for _ in range(draws)])


def build_domain(
    features: Mapping[str, np.ndarray],
    ppm_pools: Sequence[str],
    ppm_spearman: Mapping[str, float],
    seed: int,
    batch: int = 200,
    draws: int = 200,
) -> dict[str, Any]:
    """``domain.json`` content: per-pool stats, the PPM's training pools and a calibrated threshold.

    ``ppm_spearman``: measured predicted-vs-measured Spearman of the PPM on held-out pools; those
    below 0.3 must be flagged. A PPM trained on several pools is calibrated leave-one-pool-out: for one
    of its own pools, the value is the Spearman of the PPM fitted without it, and its distance is the
    distance to the *other* training pools (what that PPM saw). The threshold is the midpoint between
    the in-domain 95th percentile (random ``batch``-row subsets of the PPM's pools) and the nearest pool
    to flag; when they overlap, the flagging side wins (threshold just below the nearest pool to flag).
    """
    stats = {name: pool_stats(x) for name, x in features.items()}
    inside = max(float(np.percentile(in_pool_distances(features[p], batch, draws, seed), 95)) for p in ppm_pools)
    held = {name: min(distance(x, stats[p]) for p in ppm_pools) for name, x in features.items() if name not in ppm_pools}
    lopo = {
        name: min(distance(features[name], stats[p]) for p in ppm_pools if p != name)
        for name in ppm_pools
        if name in ppm_spearman and len(ppm_pools) > 1
    }
    flag = [d for n, d in (held | lopo).items() if ppm_spearman.get(n, 1.0) < 0.3]
    if flag and min(flag) > inside:
        threshold = (inside + min(flag)) / 2
    elif flag:
        threshold = min(flag) * 0.99
    else:
        threshold = inside * 1.5
    calibration = {
        name: {
            "distance": d,
            "ppm_spearman": ppm_spearman.get(name),
            "flagged": d > threshold,
            "held_out": "leave-one-pool-out" if name in lopo else "not trained on",
        }
        for name, d in (held | lopo).items()
    }
    return {
        "features": list(DOMAIN_FEATURES),
        "distance": DISTANCE,
        "pools": stats,
        "ppm_pools": list(ppm_pools),
        "threshold": threshold,
        "in_domain_p95": inside,
        "batch_rows_for_p95": batch,
        "calibration": calibration,
    }
