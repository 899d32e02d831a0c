"""The bundle's training domain (``domain.json``) and the distance a batch is checked with.

``domain.json`` (written by the bundle builder with :func:`build_domain`, read by the predictor and
served to the router in ``GetRoutingModel``)::

    {"distance": "js", "threshold": 0.04, "feature_names": [tag names],
     "pools": {"mtbench": {"mean": [per-tag frequency], "count": 1747}, ...}, ...}

A batch is in domain when its distance to the *nearest* training pool is at most ``threshold``
(calibrated on held-out pools by the builder; extra keys are kept and served verbatim).
Both sides are per-tag frequencies (the share of instances carrying each tag). Distances:

* ``js`` / ``jensen_shannon``: mean over tags of the Jensen-Shannon divergence (base 2, in [0, 1])
  between the two Bernoulli distributions of the tag;
* ``l1``: mean absolute difference of the frequencies; ``l2`` / ``euclidean``: Euclidean distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import TAG_NAMES

_EPS = 1e-12
CHUNK_ROWS = 65_536
DISTANCES = ("js", "l1", "l2")


def build_domain(pool_tags: Mapping[str, np.ndarray], threshold: float, distance_kind: str = "js",
                 **extra: Any) -> dict[str, Any]:
    """``domain.json`` content from each training pool's (n, 90) tag matrix; ``extra`` keys are kept."""
    columns = np.arange(len(TAG_NAMES))
    distance(distance_kind, np.zeros(1), np.zeros(1))  # unknown kind -> ValueError now, not at serving time
    pools = {name: {"mean": batch_mean(tags, columns).round(6).tolist(), "count": int(len(tags))}
             for name, tags in sorted(pool_tags.items())}
    return {"distance": distance_kind, "threshold": float(threshold), "feature_names": list(TAG_NAMES), "pools": pools,
            **extra}


def nearest(domain: Mapping[str, Any], tag_matrix: np.ndarray) -> tuple[float, str]:
    """(distance to the nearest pool of ``domain``, its name) for a batch (columns = TAG_NAMES order)."""
    from hybridpref.common.vocabulary import TAG_INDEX

    columns = np.array([TAG_INDEX[n] for n in domain["feature_names"]])
    mean = batch_mean(tag_matrix, columns)
    return min(((distance(domain["distance"], mean, np.asarray(p["mean"])), name) for name, p in domain["pools"].items()),
               key=lambda t: t[0])


def batch_mean(tag_matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Frequency of each tag in ``columns`` over the batch (chunked: no float copy of a huge matrix)."""
    n = len(tag_matrix)
    total = np.zeros(len(columns))
    for start in range(0, n, CHUNK_ROWS):
        total += np.asarray(tag_matrix[start : start + CHUNK_ROWS][:, columns], dtype=np.float64).sum(axis=0)
    return total / max(1, n)


def distance(kind: str, p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    kind = kind.lower()
    if kind in ("js", "jensen_shannon", "jensen-shannon"):
        return float(np.mean(_bernoulli_js(p, q)))
    if kind == "l1":
        return float(np.mean(np.abs(p - q)))
    if kind in ("l2", "euclidean"):
        return float(np.linalg.norm(p - q))
    raise ValueError(f"unknown domain distance {kind!r}; expected js, l1 or l2")


def _bernoulli_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.zeros_like(a)
        for x, y in ((a, b), (1 - a, 1 - b)):
            ok = x > _EPS
            out[ok] += x[ok] * np.log2(x[ok] / np.maximum(y[ok], _EPS))
        return out

    return (kl(p, m) + kl(q, m)) / 2
