"""The paper's strategies: ``topk`` (largest solo gains), ``optimal_pos`` (every positive solo gain) and
``simulated`` (best of N tag-walk candidate mixes), all on the PPM."""

from __future__ import annotations

import numpy as np

from hybridpref.router.strategies.base import (
    RoutingContext,
    marginal_gains,
    mask_from_order,
    per_unit_cost,
    require_finite_budget,
    select_by_gain,
    static_gains,
)


def topk(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Gain of each instance alone, ``f(t_i) - f(0)``; route the best under the budget."""
    gains = static_gains(ctx)
    if ctx.budget.kind == "auto":
        return gains > 0, gains
    return select_by_gain(ctx, gains), gains


def solo_gain_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of the PPM strategies (``topk``, ``optimal_pos``, ``greedy``): each instance's solo gain
    ``f(t_i) - f(0)`` (per unit of cost under a cost budget). Greedy's re-evaluation of marginal gains as
    its mix grows has no meaning across batches: a campaign ranks by the solo gain."""
    return per_unit_cost(ctx, static_gains(ctx))


def optimal_pos(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Every instance with a positive solo gain; a count/cost budget caps it (best first)."""
    gains = static_gains(ctx)
    positive = gains > 0
    if ctx.budget.kind == "auto":
        return positive, gains
    return select_by_gain(ctx, np.where(positive, gains, -np.inf), only_positive=True), gains


def simulated(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """The paper's simulation: draw N candidate mixes at the budget, score all, keep the best.

    Candidates are drawn like the paper's knapsack (``run_knapsack``): walk the tags in a
    random order, adding each tag's not-yet-added instances in random order until the budget
    is full. Under a count budget that means: whole tags in order, then a random part of the
    last one, so a candidate costs a few boolean ORs over n. Instances with no tag come last.
    ``simulated_sampler="uniform"`` draws plain uniform subsets instead. Candidates are scored
    in chunks with one ``scorer.score`` call each (ties: the earlier candidate wins).
    """
    require_finite_budget(ctx, "simulated")
    n_cand = max(1, int(ctx.simulated_candidates))
    rng = ctx.rng(2)
    columns = np.ascontiguousarray(np.asarray(ctx.tags, dtype=bool).T)  # (V, n): one tag's instances per row
    tags32 = np.asarray(ctx.tags, dtype=np.float32)
    chunk = max(1, min(n_cand, 256, (1 << 25) // max(1, ctx.n)))  # bounds the (chunk, n) masks to 32 MB
    best_score, best_mask = -np.inf, np.zeros(ctx.n, dtype=bool)
    for start in range(0, n_cand, chunk):
        ctx.check_deadline()
        masks = np.stack([_candidate_mask(ctx, rng, columns) for _ in range(min(chunk, n_cand - start))])
        counts = (masks.astype(np.float32) @ tags32).astype(np.float64)
        scores = np.asarray(ctx.ppm.score(counts, ctx.n), dtype=np.float64)
        i = int(np.argmax(scores))
        if scores[i] > best_score:
            best_score, best_mask = float(scores[i]), masks[i]
    ctx.info.update(candidates=float(n_cand), best_candidate_score=best_score)
    return best_mask, marginal_gains(ctx.ppm, ctx.tags, best_mask)


def _candidate_mask(ctx: RoutingContext, rng: np.random.Generator, columns: np.ndarray) -> np.ndarray:
    """One candidate mix (n,) bool at the budget."""
    n, budget = ctx.n, ctx.budget
    if ctx.simulated_sampler == "uniform":
        return mask_from_order(ctx, rng.permutation(n))
    tag_order = rng.permutation(len(columns))
    if budget.kind != "count":  # cost: the full walk order, then the knapsack fill with skipping
        return mask_from_order(ctx, _tag_walk_order(rng, columns, tag_order))
    mask = np.zeros(n, dtype=bool)
    taken, k = 0, budget.exact_count
    for v in tag_order:
        if taken >= k:
            return mask
        new = np.flatnonzero(columns[v] & ~mask)
        if taken + len(new) > k:
            new = rng.choice(new, k - taken, replace=False)
        mask[new] = True
        taken += len(new)
    if taken < k:  # untagged instances come last, in random order
        rest = np.flatnonzero(~mask)
        mask[rng.choice(rest, k - taken, replace=False)] = True
    return mask


def _tag_walk_order(rng: np.random.Generator, columns: np.ndarray, tag_order: np.ndarray) -> np.ndarray:
    """All instances in the tag-walk order: each tag's newly reached instances shuffled."""
    seen = np.zeros(columns.shape[1], dtype=bool)
    parts = []
    for v in tag_order:
        new = np.flatnonzero(columns[v] & ~seen)
        seen[new] = True
        parts.append(rng.permutation(new))
    parts.append(rng.permutation(np.flatnonzero(~seen)))
    return np.concatenate(parts)
