"""Fixed reference bins for the 9 lexical measures.

One definition of edge inclusion, used everywhere (tagger, predictor bundle, tests):

    normalised value u in [0, 1]  ->  low  if u <= 1/3
                                      mid  if 1/3 < u <= 2/3
                                      high if u > 2/3

so 0 and 1/3 are ``low``, 2/3 is ``mid`` and 1 is ``high``. Values outside [0, 1]
are clipped first (nothing falls out of every bin).

How a raw value becomes ``u``:

* similarity measures (``bertscore``, ``bertscore_length``, ``cosine_sim``,
  ``entity_sim``, ``rouge``) are already on a [0, 1] scale: ``u = clip(value, 0, 1)``;
* length measures (``vocabulary.LENGTH_MEASURES``, token counts) use their
  percentile rank in a *fixed reference distribution* stored here as a quantile
  grid (never the batch being tagged, never a routed subset; the trap in the
  paper's code). Ties in the grid take the midpoint of their ranks.

``ReferenceBins.default()`` loads ``reference_bins.json`` shipped next to this
module (built by ``scripts/build_reference_bins.py`` from ``../shared/data``);
``ReferenceBins.fit`` computes a new one, e.g. for a model bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from hybridpref.common.vocabulary import BINS, LENGTH_MEASURES, LEXICAL_MEASURES, VOCABULARY_VERSION
from hybridpref_client.core.errors import FieldViolation, InvalidInput

EDGE_LOW: float = 1.0 / 3.0
EDGE_HIGH: float = 2.0 / 3.0
GRID_POINTS: int = 101  # quantiles at 0, 1, ..., 100 %
REFERENCE_FILE = Path(__file__).with_name("reference_bins.json")


def bin_of(u: np.ndarray | float) -> np.ndarray:
    """Bin index (0 low, 1 mid, 2 high) of normalised values ``u``; NaN -> -1 (no tag).

    ``u`` is clipped to [0, 1]. Edges: [0, 1/3] -> 0, (1/3, 2/3] -> 1, (2/3, 1] -> 2.
    """
    arr = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    out = np.where(arr <= EDGE_LOW, 0, np.where(arr <= EDGE_HIGH, 1, 2)).astype(np.int64)
    return np.where(np.isnan(arr), -1, out)


def percentile_rank(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] of ``values`` against a sorted quantile ``grid`` (K+1 points).

    Linear between grid points; a value equal to one or more grid points gets the
    midpoint of their ranks; below the grid -> 0, above -> 1. Monotone in ``values``.
    """
    grid = np.asarray(grid, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    k = len(grid) - 1
    lo = np.searchsorted(grid, values, side="left")
    hi = np.searchsorted(grid, values, side="right")
    tie_rank = (lo + hi - 1) / 2.0 / k
    # strictly between grid[lo-1] and grid[lo]: interpolate
    left = np.clip(lo - 1, 0, k)
    right = np.clip(lo, 0, k)
    span = grid[right] - grid[left]
    frac = np.divide(values - grid[left], span, out=np.zeros_like(values), where=span > 0)
    between = (left + frac) / k
    out = np.where(hi > lo, tie_rank, between)
    out = np.where(values < grid[0], 0.0, out)
    out = np.where(values > grid[-1], 1.0, out)
    return np.where(np.isnan(values), np.nan, out)


@dataclass(frozen=True)
class ReferenceBins:
    """Quantile grids of the length measures from a fixed reference set.

    ``grids[m]``: sorted float array of ``GRID_POINTS`` quantiles for each measure in
    ``LENGTH_MEASURES``. ``source`` says what reference set it came from.
    """

    grids: dict[str, np.ndarray]
    source: str = ""
    n_reference: int = 0
    vocabulary_version: str = VOCABULARY_VERSION
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [m for m in LENGTH_MEASURES if m not in self.grids]
        if missing:
            raise InvalidInput(FieldViolation("reference_bins.grids", f"missing grids for {missing}"))
        for m, g in self.grids.items():
            g = np.asarray(g, dtype=np.float64)
            if g.ndim != 1 or len(g) < 2 or np.any(np.diff(g) < 0) or not np.all(np.isfinite(g)):
                raise InvalidInput(FieldViolation(f"reference_bins.grids.{m}", "must be a sorted finite array of >= 2 quantiles"))

    # -- normalise and bin -------------------------------------------------
    def normalise(self, measures: np.ndarray) -> np.ndarray:
        """Map raw measures (n, len(LEXICAL_MEASURES)) to u in [0, 1] (NaN stays NaN)."""
        measures = np.asarray(measures, dtype=np.float64)
        if measures.ndim != 2 or measures.shape[1] != len(LEXICAL_MEASURES):
            raise ValueError(f"measures must have shape (n, {len(LEXICAL_MEASURES)}), got {measures.shape}")
        u: np.ndarray = np.clip(measures, 0.0, 1.0)
        for j, m in enumerate(LEXICAL_MEASURES):
            if m in LENGTH_MEASURES:
                u[:, j] = percentile_rank(measures[:, j], self.grids[m])
        return u

    def tag_bits(self, measures: np.ndarray) -> np.ndarray:
        """uint8 (n, 27) one-hot bins in vocabulary order (``<measure>:<bin>``, bins low/mid/high).

        A NaN measure sets none of its three bits.
        """
        b = bin_of(self.normalise(measures))  # (n, 9)
        n = b.shape[0]
        out = np.zeros((n, len(LEXICAL_MEASURES) * len(BINS)), dtype=np.uint8)
        rows, cols = np.nonzero(b >= 0)
        out[rows, cols * len(BINS) + b[rows, cols]] = 1
        return out

    # -- build / store -----------------------------------------------------
    @classmethod
    def fit(cls, measures: np.ndarray, source: str = "fit") -> ReferenceBins:
        """Compute the quantile grids from reference measures (n, len(LEXICAL_MEASURES)); NaN rows ignored per measure."""
        measures = np.asarray(measures, dtype=np.float64)
        if measures.ndim != 2 or measures.shape[1] != len(LEXICAL_MEASURES) or measures.shape[0] < 2:
            raise InvalidInput(FieldViolation("measures", f"need shape (n>=2, {len(LEXICAL_MEASURES)}), got {measures.shape}"))
        levels = np.linspace(0.0, 1.0, GRID_POINTS)
        grids = {}
        for m in LENGTH_MEASURES:
            col = measures[:, LEXICAL_MEASURES.index(m)]
            col = col[np.isfinite(col)]
            if len(col) < 2:
                raise InvalidInput(FieldViolation(f"measures[:, {m}]", "fewer than 2 finite values"))
            grids[m] = np.quantile(col, levels)
        return cls(grids=grids, source=source, n_reference=int(measures.shape[0]))

    def fingerprint(self) -> str:
        """Short content hash of the grids (what a bundle / response can quote to prove which
        reference binned its tags)."""
        import hashlib

        canon = json.dumps({m: [round(float(x), 9) for x in self.grids[m]] for m in sorted(self.grids)}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(
            {
                "vocabulary_version": self.vocabulary_version,
                "source": self.source,
                "n_reference": self.n_reference,
                "edges": {"low_max": EDGE_LOW, "mid_max": EDGE_HIGH, "rule": "[0,1/3] low, (1/3,2/3] mid, (2/3,1] high"},
                "grids": {m: [float(x) for x in g] for m, g in self.grids.items()},
                "meta": self.meta,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> ReferenceBins:
        try:
            obj = json.loads(text)
            grids = {m: np.asarray(g, dtype=np.float64) for m, g in obj["grids"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(FieldViolation("reference_bins", f"not a reference-bins JSON document: {exc}")) from None
        return cls(
            grids=grids,
            source=str(obj.get("source", "")),
            n_reference=int(obj.get("n_reference", 0)),
            vocabulary_version=str(obj.get("vocabulary_version", VOCABULARY_VERSION)),
            meta={str(k): str(v) for k, v in (obj.get("meta") or {}).items()},
        )

    @classmethod
    def default(cls) -> ReferenceBins:
        """The packaged reference (``reference_bins.json``), cached per process."""
        return _load_default()


@lru_cache(maxsize=1)
def _load_default() -> ReferenceBins:
    return ReferenceBins.from_json(REFERENCE_FILE.read_text(encoding="utf-8"))
