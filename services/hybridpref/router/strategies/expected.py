"""Strategies on the expected-correction model: ``expected_gain`` (expected label corrections per unit of
human cost) and ``hybrid`` (the same, the PPM breaking ties inside its domain; the default)."""

from __future__ import annotations

import numpy as np

from hybridpref.router.strategies.base import RoutingContext, per_unit_cost, select_by_gain, static_gains
from hybridpref_client.core.errors import NotReady


def expected_gain(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Route by expected label corrections per unit of human cost (the correction model's
    ``p_lm_wrong - p_human_wrong``); ties broken by a seeded random rank. Returns the expected
    gains as ``gains``."""
    gain = _require_expected_gain(ctx)
    tie = ctx.rng(11).permutation(ctx.n) / max(1, ctx.n - 1)
    return _route_by_expected(ctx, gain, tie), gain


def hybrid(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """The default: ``expected_gain``, with the PPM's solo gain (min-max scaled) breaking ties when
    a scorer is given and ``ppm_in_domain``; otherwise exactly ``expected_gain``. The PPM never
    overrides a distinct expected gain: cross-pool it did not transfer (docs/EVALUATION.md)."""
    gain = _require_expected_gain(ctx)
    if ctx.scorer is not None and ctx.ppm_in_domain:
        ppm = static_gains(ctx)
        span = float(np.ptp(ppm)) if len(ppm) else 0.0
        tie = (ppm - ppm.min()) / span if span > 0 else np.zeros(ctx.n)  # min-max, not a rank: no O(n log n) sort
        ctx.info["ppm_tie_breaker"] = 1.0
    else:
        tie = ctx.rng(11).permutation(ctx.n) / max(1, ctx.n - 1)
        ctx.info["ppm_tie_breaker"] = 0.0
    return _route_by_expected(ctx, gain, tie), gain


def expected_gain_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of ``expected_gain``: the expected corrections (per unit of cost under a cost budget)."""
    return per_unit_cost(ctx, _require_expected_gain(ctx))


def hybrid_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of ``hybrid``: the expected corrections, the PPM's min-max scaled solo gain (times
    ``tie_scale``) breaking ties inside the PPM's domain; per unit of cost under a cost budget."""
    gain = _require_expected_gain(ctx)
    if ctx.scorer is not None and ctx.ppm_in_domain and ctx.n:
        ppm = static_gains(ctx)
        span = float(np.ptp(ppm))
        gain = gain + ctx.expected_gain_options.tie_scale * ((ppm - ppm.min()) / span if span > 0 else 0.0)
    return per_unit_cost(ctx, gain)


def _route_by_expected(ctx: RoutingContext, gain: np.ndarray, tie: np.ndarray) -> np.ndarray:
    opts = ctx.expected_gain_options
    priority = gain + opts.tie_scale * tie
    if ctx.budget.kind == "auto":
        costs = ctx.budget.costs
        rel = gain if costs is None else gain / (np.asarray(costs, dtype=np.float64) / max(float(np.mean(costs)), 1e-12))
        return rel > opts.auto_threshold
    return select_by_gain(ctx, priority)


def _require_expected_gain(ctx: RoutingContext) -> np.ndarray:
    if ctx.expected_gain is None:
        raise NotReady(
            "this strategy needs the expected-correction model's gains (a bundle with correction.onnx and the judge's signals)"
        )
    return np.asarray(ctx.expected_gain, dtype=np.float64)
