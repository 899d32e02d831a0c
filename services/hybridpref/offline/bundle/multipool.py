"""Fit one PPM on the simulated mixes of several pools, with in-pool CV and leave-one-pool-out scores.

Accuracy levels differ by pool (their gold sets differ in difficulty), so the target is each pool's
accuracy **centred on that pool's mean over its candidates**: the fit then learns how a mix moves
accuracy, not which pool it came from (the tag rates would otherwise proxy for the pool). The served
bias adds back the mean of the pool means, so a score still reads as an accuracy on an "average"
pool; the router only uses differences between mixes, which the centring does not change.

Leave-one-pool-out: fit on the other pools' rows, predict the held-out pool's mixes; Spearman,
partial Spearman given the human share (``evaluation.stats.partial_spearman``) and RMSE after removing
each side's mean (the held-out pool's level is unknown to the fit by construction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridpref.offline.bundle import ppm_fit
from hybridpref.offline.bundle.simulate import PoolSimulation
from hybridpref.routing_model import ppm as ppm_mod

CENTRING = "per-pool mean: y - mean_k(y) within each pool; served bias + mean of the pool means"


@dataclass
class Rows:
    """The union of the pools' (mix features -> centred accuracy) rows."""

    x: np.ndarray  # (N, V)
    y: np.ndarray  # (N,) centred per pool
    pool: np.ndarray  # (N,) pool name per row
    share: np.ndarray  # (N,) human share per row
    means: dict[str, float]  # pool -> mean accuracy over its candidates

    @property
    def offset(self) -> float:
        """Added to the served bias: the mean of the pool means."""
        return float(np.mean(list(self.means.values())))

    def only(self, keep: np.ndarray) -> Rows:
        names = set(self.pool[keep].tolist())
        return Rows(
            self.x[keep], self.y[keep], self.pool[keep], self.share[keep], {k: v for k, v in self.means.items() if k in names}
        )


def union(sims: Sequence[PoolSimulation]) -> Rows:
    means = {s.name: float(s.y.mean()) for s in sims}
    return Rows(
        x=np.vstack([s.x for s in sims]),
        y=np.concatenate([s.y - means[s.name] for s in sims]),
        pool=np.concatenate([np.full(len(s.y), s.name, dtype=object) for s in sims]),
        share=np.concatenate([s.share for s in sims]),
        means=means,
    )


def fit(rows: Rows, variant: str) -> tuple[ppm_mod.QuadraticPPM, float]:
    """The served model for ``variant`` (linear or quadratic) on ``rows``, offset folded into the bias."""
    model, alpha = ppm_fit.fit_ridge(rows.x, rows.y, quadratic=variant == "quadratic")
    return ppm_mod.QuadraticPPM(model.bias + rows.offset, model.linear, model.quad, model.kind), alpha


def cross_validate(rows: Rows, variant: str, folds: int, seed: int) -> dict[str, Any]:
    """K-fold CV over the union rows (pooled out-of-fold predictions) plus Spearman within each pool."""
    from hybridpref.offline import stats

    pred, per_fold = ppm_fit.out_of_fold(rows.x, rows.y, variant, folds, seed)
    out: dict[str, Any] = {
        "cv_spearman": _finite(stats.spearman(pred, rows.y)),
        "cv_spearman_fold_mean": float(np.mean(per_fold)) if per_fold else 0.0,
        "cv_rmse": float(np.sqrt(np.mean((pred - rows.y) ** 2))),
        "target_std": float(np.std(rows.y)),
    }
    if len(rows.means) > 1:
        out["cv_spearman_by_pool"] = {
            p: _finite(stats.spearman(pred[rows.pool == p], rows.y[rows.pool == p])) for p in rows.means
        }
    return out


def leave_one_pool_out(rows: Rows, variant: str) -> tuple[dict[str, dict[str, float]], dict[str, ppm_mod.QuadraticPPM]]:
    """Per held-out pool: scores of a model fitted on the other pools; also those models (for ``--lopo-out``)."""
    from hybridpref.offline import stats

    scores, models = {}, {}
    for name in rows.means:
        test = rows.pool == name
        model, alpha = fit(rows.only(~test), variant)
        pred, y, share = model.predict(rows.x[test]), rows.y[test], rows.share[test]
        defined = np.ptp(pred) > 0 and np.ptp(y) > 0  # a constant side leaves every correlation undefined (0.0)
        scores[name] = {
            "spearman": _finite(stats.spearman(pred, y)),
            "partial_spearman_given_share": _finite(stats.partial_spearman(pred, y, share)) if defined else 0.0,
            "spearman_share_vs_measured": _finite(stats.spearman(share, y)),
            "rmse_centred": float(np.sqrt(np.mean(((pred - pred.mean()) - (y - y.mean())) ** 2))),
            "measured_std": float(np.std(y)),
            "candidates": int(test.sum()),
            "ridge_alpha": alpha,
        }
        models[name] = model
    return scores, models


def _finite(value: float) -> float:
    """NaN (constant side) -> 0.0, as the single-pool build reports an undefined Spearman."""
    return float(value) if np.isfinite(value) else 0.0
