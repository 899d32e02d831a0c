"""The reference strategies: everything to humans, everything to the judge, a seeded random subset."""

from __future__ import annotations

import numpy as np

from hybridpref.router.strategies.base import RoutingContext, mask_from_order, require_finite_budget


def all_human(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(ctx.n, dtype=bool), np.zeros(ctx.n)


def all_lm(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(ctx.n, dtype=bool), np.zeros(ctx.n)


def random_subset(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    require_finite_budget(ctx, "random")
    order = ctx.rng(1).permutation(ctx.n)
    return mask_from_order(ctx, order), np.zeros(ctx.n)


def random_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of ``random``: a seeded uniform draw per instance (the threshold then takes a random
    share of every batch)."""
    return ctx.rng(1).random(ctx.n)
