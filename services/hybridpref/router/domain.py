"""Distance between a batch's tag distribution and a training pool's (the bundle's domain check).

Both sides are per-tag frequencies (the share of instances carrying each tag). Distances:

* ``js`` / ``jensen_shannon``: mean over tags of the Jensen-Shannon divergence (base 2, in [0, 1])
  between the two Bernoulli distributions of the tag;
* ``l1``: mean absolute difference of the frequencies; ``l2`` / ``euclidean``: Euclidean distance.
"""

from __future__ import annotations

import numpy as np

from hybridpref.router.scoring import CHUNK_ROWS

_EPS = 1e-12


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
