"""Statistics of the harness: paired group bootstrap, minimum detectable difference, (partial) Spearman.

The bootstrap resamples whole prompt groups (rows of one prompt are correlated: same question, same
responses voted several times), stratified by pool when pools are pooled. It is vectorised: one
(B, G) matrix of how often each group is drawn; a statistic over rows becomes per-group sums and
one matrix product, so thousands of resamples of dozens of statistics cost milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z_975 = float(sps.norm.ppf(0.975))
Z_80 = float(sps.norm.ppf(0.80))


@dataclass
class GroupBootstrap:
    """Resampling weights: ``weights`` (B, G) counts per group; ``group_of_row`` (n,) index into G."""

    weights: np.ndarray
    group_of_row: np.ndarray

    @classmethod
    def create(cls, groups: np.ndarray, n_boot: int, seed: int, strata: np.ndarray | None = None) -> GroupBootstrap:
        """Draw ``n_boot`` resamples of the groups with replacement (within each stratum when given:
        a row's stratum is its pool, so every resample keeps each pool's size)."""
        uniq, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
        g = len(uniq)
        rng = np.random.default_rng([int(seed), 0xB007])
        if strata is None:
            group_stratum = np.zeros(g, dtype=np.int64)
        else:
            group_stratum = np.zeros(g, dtype=np.int64)
            _, s_idx = np.unique(np.asarray(strata), return_inverse=True)
            group_stratum[group_of_row] = s_idx
        weights = np.zeros((n_boot, g), dtype=np.float64)
        for s in np.unique(group_stratum):
            members = np.flatnonzero(group_stratum == s)
            draws = rng.integers(0, len(members), size=(n_boot, len(members)))
            # count draws per member: offset each resample's draws into its own block, one bincount
            flat = (draws + np.arange(n_boot)[:, None] * len(members)).ravel()
            counts = np.bincount(flat, minlength=n_boot * len(members)).reshape(n_boot, len(members))
            weights[:, members] = counts
        return cls(weights, group_of_row.astype(np.int64))

    def group_sums(self, values: np.ndarray) -> np.ndarray:
        """(n,) or (n, m) row values -> (G,) or (G, m) sums per group (NaN counts as 0)."""
        from scipy import sparse

        v = np.nan_to_num(np.asarray(values, dtype=np.float64))
        g, n = self.weights.shape[1], len(self.group_of_row)
        indicator = sparse.csr_matrix((np.ones(n), (self.group_of_row, np.arange(n))), shape=(g, n))
        return np.asarray(indicator @ v)

    def means(self, values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """Resampled means of ``values`` over ``eligible`` rows: (n, m) -> (B, m); (n,) -> (B,)."""
        e = np.asarray(eligible, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        num = self.weights @ self.group_sums(v * (e if v.ndim == 1 else e[:, None]))
        den = self.weights @ self.group_sums(e)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / (den if v.ndim == 1 else den[:, None])


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaN samples ignored; NaN when none is finite)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def mean_over_eligible(values: np.ndarray, eligible: np.ndarray) -> float:
    e = np.asarray(eligible, dtype=bool)
    return float(np.mean(np.asarray(values, dtype=np.float64)[e])) if e.any() else float("nan")


def paired_mdd(correct_a: np.ndarray, correct_b: np.ndarray, eligible: np.ndarray) -> float:
    """Minimum detectable difference (two-sided 5%, 80% power) of a paired accuracy comparison:
    ``(z_.975 + z_.8) * sd(d) / sqrt(n)`` with ``d`` the per-pair difference of correctness
    (McNemar-style: only discordant pairs contribute). Ignores prompt-group clustering."""
    e = np.asarray(eligible, dtype=bool)
    d = (np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64))[e]
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    return float((Z_975 + Z_80) * np.std(d, ddof=1) / np.sqrt(len(d)))


def two_proportion_mdd(p: float, n: int) -> float:
    """Unpaired minimum detectable difference of two accuracies near ``p`` on ``n`` pairs each
    (two-sided 5%, 80% power): ``(z_.975 + z_.8) * sqrt(2 p (1 - p) / n)``."""
    return float((Z_975 + Z_80) * np.sqrt(2 * p * (1 - p) / max(1, n)))


def gold_size_for_mdd(target: float, per_pair_sd: float) -> int:
    """Pairs needed for a paired comparison with per-pair sd ``per_pair_sd`` to detect ``target``."""
    return int(np.ceil(((Z_975 + Z_80) * per_pair_sd / target) ** 2))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(sps.spearmanr(a, b).statistic)


def partial_spearman(a: np.ndarray, b: np.ndarray, control: np.ndarray) -> float:
    """Spearman of ``a`` and ``b`` given ``control``: Pearson correlation of the residuals of the
    ranks of ``a`` and ``b`` after a linear fit on the ranks of ``control`` (rank-residual method)."""
    ra, rb, rc = (sps.rankdata(np.asarray(x, dtype=np.float64)) for x in (a, b, control))
    if len(ra) < 4 or np.ptp(rc) == 0:
        return spearman(a, b)
    design = np.column_stack([np.ones_like(rc), rc])
    res_a = ra - design @ np.linalg.lstsq(design, ra, rcond=None)[0]
    res_b = rb - design @ np.linalg.lstsq(design, rb, rcond=None)[0]
    if np.std(res_a) == 0 or np.std(res_b) == 0:
        return float("nan")
    return float(np.corrcoef(res_a, res_b)[0, 1])
