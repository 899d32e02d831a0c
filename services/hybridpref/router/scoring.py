"""Mix scoring: the router's view of the performance prediction model (PPM).

A *mix* is a routing decision; its count vector ``counts`` (V,) holds, per tag, how many
human-routed instances carry the tag. The PPM reads ``x = counts / pool_size`` (so one
model serves any batch size) and predicts the quality of a reward model trained on the
mix (higher is better).

The strategies, the summary and the explanation read :class:`QuadraticScorer`, ``f(x) = b + w.x + x^T Q x``
in numpy: what a quadratic PPM bundle is (the predictor serves its coefficients), and what tests and
benchmarks build by hand. Every strategy that reads the PPM uses its quadratic form directly.
"""

from __future__ import annotations

import numpy as np

from hybridpref_client.core.errors import FieldViolation, InvalidInput

# Rows per chunk for (rows x V) temporaries: 65,536 x 90 x 8 B = 47 MB in float64.
CHUNK_ROWS = 65_536


def check_pool_size(pool_size: int) -> int:
    if int(pool_size) <= 0:
        raise InvalidInput(FieldViolation("pool_size", f"must be > 0, got {pool_size}"))
    return int(pool_size)


class QuadraticScorer:
    """``f(x) = bias + linear . x + x^T quad x`` with ``x = counts / pool_size``.

    ``quad`` is symmetrised on construction (``(Q + Q^T) / 2`` gives the same ``f``).
    Everything is float64, computed in row chunks so 1,000,000-row batches stay well under
    1 GB. (The strategies' own hot loops use float32 copies of ``quadratic_form()``.)
    """

    def __init__(self, bias: float, linear: np.ndarray, quad: np.ndarray | None = None):
        w = np.asarray(linear, dtype=np.float64).reshape(-1)
        v = w.shape[0]
        q = np.zeros((v, v)) if quad is None else np.asarray(quad, dtype=np.float64)
        if q.shape != (v, v):
            raise ValueError(f"quad must be ({v}, {v}) to match linear, got {q.shape}")
        if not (np.isfinite(w).all() and np.isfinite(q).all() and np.isfinite(bias)):
            raise ValueError("QuadraticScorer coefficients must be finite")
        self.bias = float(bias)
        self.linear = w
        self.quad = (q + q.T) / 2.0

    @property
    def num_tags(self) -> int:
        return self.linear.shape[0]

    @classmethod
    def random(cls, num_tags: int, seed: int, *, quad_scale: float = 1.0, bias: float = 0.6) -> QuadraticScorer:
        """A random but plausible PPM (small linear effects, weaker pairwise ones) for demos and benchmarks."""
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 0.05, num_tags)
        q = rng.normal(0.0, 0.02 * quad_scale, (num_tags, num_tags))
        return cls(bias, w, q)

    def quadratic_form(self) -> tuple[float, np.ndarray, np.ndarray]:
        return self.bias, self.linear, self.quad

    def score(self, counts: np.ndarray, pool_size: int) -> np.ndarray:
        p = check_pool_size(pool_size)
        x = np.atleast_2d(np.asarray(counts, dtype=np.float64)) / p
        self._check_width(x.shape[1], "counts")
        scores: np.ndarray = self.bias + x @ self.linear + np.einsum("ij,ij->i", x @ self.quad, x)
        return scores

    def gains(self, tag_matrix: np.ndarray, current: np.ndarray | None, pool_size: int) -> np.ndarray:
        p = check_pool_size(pool_size)
        self._check_width(np.shape(tag_matrix)[1], "tag_matrix")
        static = self.static_gains(tag_matrix, p)
        if current is None or not np.any(current):
            return static
        u = self.quad @ np.asarray(current, dtype=np.float64)
        return static + (2.0 / p**2) * _rows_dot(tag_matrix, u)

    def static_gains(self, tag_matrix: np.ndarray, pool_size: int) -> np.ndarray:
        """Gains against the empty mix: ``w.t / P + t^T Q t / P^2`` -> (n,) float64."""
        p = float(pool_size)
        lin = _rows_dot(tag_matrix, self.linear) / p
        self_term = np.empty(len(tag_matrix), dtype=np.float64)
        for start in range(0, len(tag_matrix), CHUNK_ROWS):
            block = np.asarray(tag_matrix[start : start + CHUNK_ROWS], dtype=np.float64)
            self_term[start : start + len(block)] = np.einsum("ij,ij->i", block @ self.quad, block)
        return lin + self_term / p**2

    def contributions(self, tag_matrix: np.ndarray, current: np.ndarray | None, pool_size: int) -> np.ndarray:
        """Per-tag split of each instance's gain: (n, V) float64 whose rows sum to ``gains``.

        Tag ``j`` of instance ``i`` gets ``t_ij * (w_j / P + (2 Q c + Q t_i)_j / P^2)``: its linear
        effect plus its share of the pairwise effects. Untagged entries are 0.
        """
        p = float(check_pool_size(pool_size))
        t = np.asarray(tag_matrix, dtype=np.float64)
        c = np.zeros(self.num_tags) if current is None else np.asarray(current, dtype=np.float64)
        per_tag = self.linear / p + 2.0 * (self.quad @ c) / p**2
        return t * (per_tag[None, :] + (t @ self.quad) / p**2)

    def _check_width(self, width: int, name: str) -> None:
        if width != self.num_tags:
            raise InvalidInput(FieldViolation(name, f"has {width} tag columns; the PPM reads {self.num_tags}"))


def unique_rows(tag_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 0/1 rows and the inverse map: ``(U (G, V) float64, inverse (n,) int64)``, ``U[inverse] == rows``.

    Rows are bit-packed before sorting, so this is fast even for a million rows.
    """
    t = np.asarray(tag_matrix) != 0
    packed = np.packbits(t, axis=1)
    width = packed.shape[1]
    padded = np.zeros((len(packed), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = packed
    keys = np.ascontiguousarray(padded).view(f"V{padded.shape[1]}").reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return t[first].astype(np.float64), inverse.reshape(-1)


def mix_counts(tag_matrix: np.ndarray, human_mask: np.ndarray) -> np.ndarray:
    """Count vector of a mix: sum of the tag rows routed to humans -> (V,) float64."""
    counts = np.zeros(np.shape(tag_matrix)[1], dtype=np.float64)
    idx = np.flatnonzero(human_mask)
    for start in range(0, len(idx), CHUNK_ROWS):
        counts += np.asarray(tag_matrix[idx[start : start + CHUNK_ROWS]], dtype=np.float64).sum(axis=0)
    return counts


def _rows_dot(tag_matrix: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``tag_matrix @ v`` in float64 chunks (bounds the upcast copy of a uint8 matrix)."""
    v64 = np.asarray(v, dtype=np.float64)
    out = np.empty(len(tag_matrix), dtype=np.float64)
    for start in range(0, len(tag_matrix), CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = np.asarray(tag_matrix[start : start + CHUNK_ROWS], dtype=np.float64) @ v64
    return out
