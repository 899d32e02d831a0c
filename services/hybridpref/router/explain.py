"""Top contributing tags of each instance's PPM gain against the chosen mix, fast enough for a million rows.

The definition (tag ``j`` of instance ``i``: ``w_j / P + (2 Q c -+ Q t_i)_j / P^2``, ``c`` the chosen mix's
counts, ``-`` for routed rows: ``QuadraticScorer.contributions`` against the mix without the row; a row's
contributions sum to its marginal gain), computed in float32 row chunks with one BLAS thread, and
the top ``k`` by ``k`` arg-max passes instead of a partition of every row (ties: lower tag index).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from hybridpref.router.scoring import QuadraticScorer

CHUNK = 32_768


def top_tags(scorer: QuadraticScorer, tag_matrix: np.ndarray, human_mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tag_idx (n, k) int64, value (n, k) float64)``, largest |contribution| first; -1 / 0.0 pad."""
    tags = np.asarray(tag_matrix)
    n, v = tags.shape
    k = max(0, min(int(k), v))
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.zeros((n, k))
    if n == 0 or k == 0:
        return idx, val
    _, w, q = scorer.quadratic_form()
    mask = np.asarray(human_mask, dtype=bool)
    p = float(n)
    counts = tags[mask].sum(axis=0, dtype=np.int64).astype(np.float64)
    base = (w / p + 2.0 * (q @ counts) / p**2).astype(np.float32)
    q32 = (q / p**2).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n, CHUNK):
            t = np.asarray(tags[start : start + CHUNK], dtype=np.float32)
            sign = np.where(mask[start : start + len(t)], -1.0, 1.0).astype(np.float32)[:, None]
            contrib = t * (base[None, :] + sign * (t @ q32))
            _top_k(contrib, k, idx[start : start + len(t)], val[start : start + len(t)])
    return idx, val


def _top_k(contrib: np.ndarray, k: int, idx_out: np.ndarray, val_out: np.ndarray) -> None:
    mag = np.abs(contrib)
    rows = np.arange(len(contrib))
    for r in range(k):
        j = np.argmax(mag, axis=1)  # first maximum: the lower tag index wins ties
        best = mag[rows, j]
        keep = best > 0
        idx_out[keep, r] = j[keep]
        val_out[keep, r] = contrib[rows[keep], j[keep]]
        mag[rows, j] = -1.0
