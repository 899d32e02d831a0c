"""Top contributing tags of each instance's PPM gain against the chosen mix, fast enough for a million rows.

The definition (tag ``j`` of instance ``i``: ``w_j / P + (2 Q c -+ Q t_i)_j / P^2``, ``c`` the chosen mix's
counts, ``-`` for routed rows: ``QuadraticScorer.contributions`` against the mix without the row; a row's
contributions sum to its marginal gain), computed in float32 row chunks with one BLAS thread, and
the top ``k`` by ``k`` arg-max passes instead of a partition of every row (ties: lower tag index).
"""

from __future__ import annotations

from typing import Any

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


def top_correction_features(lm_model: Any, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The correction-model features that moved each row's P(LM label wrong) most, as
    ``(feature_idx (n, k) int64, value (n, k) float64)``, largest |value| first; -1 / 0.0 pad.

    ``lm_model``: the LM-wrong logistic (``mean``, ``scale``, ``coef``); a value is the feature's
    term in the log-odds, ``(x_j - mean_j) / scale_j * coef_j`` (positive: more likely wrong, so a
    human label is worth more). Features the model does not read (zero weight) never appear."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = max(0, min(int(k), x.shape[1] if x.ndim == 2 else 0))
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.zeros((n, k))
    if n == 0 or k == 0:
        return idx, val
    contrib = (x - np.asarray(lm_model.mean)) / np.asarray(lm_model.scale) * np.asarray(lm_model.coef)
    _top_k(contrib, k, idx, val)
    return idx, val


def rank_descending(values: np.ndarray) -> np.ndarray:
    """1-based rank of each value, largest first (ties: lower index first) -> (n,) int64."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


# What the strategy's ``gain`` is, per family (for the reason line).
_GAIN_WORDS = {
    "ppm": "PPM gain",
    "expected": "expected corrections",
    "doubt": "judge doubt",
    "judge_aware": "PPM gain + judge doubt",
}


def reason(
    strategy: str,
    family: str,
    human: bool,
    gain: float,
    rank: int,
    n: int,
    *,
    expected: float | None = None,
    p_lm_wrong: float | None = None,
    p_human_wrong: float | None = None,
    no_verdict: bool = False,
    order_flip: bool = False,
    confidence: float | None = None,
    seed: int = 0,
) -> str:
    """One line saying why an instance went where it went, e.g.
    ``HUMAN: expected corrections +0.41 = P(LM wrong) 0.55 - P(human wrong) 0.14, rank 3 of 486; the judge flipped
    with the order``."""
    to = "HUMAN" if human else "LM"
    if family == "baseline":
        text = f"{to}: {strategy}" + (f" (seeded draw at the budget, seed {seed})" if strategy == "random" else " (baseline)")
    else:
        text = f"{to}: {_GAIN_WORDS[family]} {gain:+.4g}"
        if family == "expected" and p_lm_wrong is not None and p_human_wrong is not None:
            text += f" = P(LM wrong) {p_lm_wrong:.2f} - P(human wrong) {p_human_wrong:.2f}"
        text += f", rank {rank} of {n}"
    if family != "expected" and expected is not None:
        text += f"; expected corrections {expected:+.3f}"
    if no_verdict:
        text += "; the judge gave no verdict"
    elif order_flip:
        text += "; the judge flipped with the presentation order"
    elif confidence is not None and family in ("doubt", "judge_aware"):
        text += f"; judge confidence {confidence:.2f}"
    return text
