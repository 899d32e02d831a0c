"""What every strategy shares: its inputs (:class:`RoutingContext`), its result, the option dataclasses
and the selection helpers (best by priority under a count or cost budget, static PPM gains, ranks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref.router.budget import ResolvedBudget
from hybridpref.router.packed import PackedTags
from hybridpref.router.scoring import QuadraticScorer, mix_counts, unique_rows
from hybridpref.router.selection import density_order, fill_in_order, top_indices
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput, NotReady

# A strategy: context -> (human mask (n,) bool, gains (n,) float64).
StrategyFn = Callable[["RoutingContext"], tuple[np.ndarray, np.ndarray]]
# A strategy's per-instance score: context -> (n,) finite float64, higher = more worth a human label. What a
# campaign's spending policy ranks by across batches (hybridpref.store.policy), instead of the strategy's own
# per-batch selection; under a cost budget it is per unit of human cost (``per_unit_cost``).
ScoreFn = Callable[["RoutingContext"], np.ndarray]


@dataclass
class RoutingResult:
    """Outcome of a strategy.

    ``human_mask`` (n,) bool: True = send to humans. ``gains`` (n,) float64: predicted score
    change of a human label for each instance, in the PPM's units (0 where the strategy uses
    no predictor; for greedy/simulated it is the marginal gain against the final mix:
    ``f(mix) - f(mix - i)`` for routed instances, ``f(mix + i) - f(mix)`` for the others).
    ``predicted_score``: the PPM's score of the chosen mix, ``None`` without a scorer.
    """

    human_mask: np.ndarray
    gains: np.ndarray
    strategy: str
    predicted_score: float | None
    info: dict[str, float] = field(default_factory=dict)

    @property
    def human_count(self) -> int:
        return int(np.count_nonzero(self.human_mask))


@dataclass
class GreedyOptions:
    """Knobs of the greedy strategy.

    Greedy re-evaluates every gain once per *round* and routes the best instances of the
    round together: ``rounds = min(k, max(min_rounds, exact_work // n))`` for a budget of k
    instances, so small problems (k * n <= exact_work) run exact one-at-a-time greedy and a
    million instances take ``min_rounds`` rounds.
    """

    min_rounds: int = 32
    exact_work: int = 20_000_000


@dataclass
class JudgeAwareOptions:
    """Knobs of the judge-aware strategy.

    priority = ``(1 - judge_weight) * gain_rank + judge_weight * p_wrong``, where
    ``gain_rank`` in [0, 1] is the PPM gain's percentile and ``p_wrong`` is the judge's
    doubt: ``1 - confidence``, raised to at least ``inconsistent_doubt`` when the judge
    flipped its verdict across presentation orders. Under ``auto`` budgets an instance goes
    to humans when ``p_wrong >= auto_doubt`` (and its PPM gain, if known, is not negative).
    """

    judge_weight: float = 0.5
    inconsistent_doubt: float = 0.75
    auto_doubt: float = 0.5


@dataclass
class ExpectedGainOptions:
    """Knobs of ``expected_gain`` / ``hybrid``.

    ``auto_threshold``: under an auto budget, route an instance when its expected corrections per
    unit of (mean-normalised) human cost exceed this; 0.1 = buy a label when it fixes one LM label
    in ten, on average, at the batch's mean cost. ``tie_scale``: size of the tie-breaker (a rank in
    [0, 1] times this), small enough never to reorder distinct expected gains of a calibrated model.
    """

    auto_threshold: float = 0.1
    tie_scale: float = 1e-6


@dataclass
class RoutingContext:
    tags: np.ndarray
    budget: ResolvedBudget
    scorer: QuadraticScorer | None
    seed: int
    judge_confidence: np.ndarray | None = None
    judge_inconsistent: np.ndarray | None = None
    simulated_candidates: int = 500
    simulated_sampler: str = "tag_walk"
    greedy: GreedyOptions = field(default_factory=GreedyOptions)
    judge_aware: JudgeAwareOptions = field(default_factory=JudgeAwareOptions)
    # The call's Deadline (expiry and cancellation); work stops between rounds once it is past.
    deadline: Deadline | None = None
    info: dict[str, float] = field(default_factory=dict)  # strategy diagnostics -> RoutingResult.info
    expected_gain: np.ndarray | None = None
    signals: JudgeSignals | None = None
    ppm_in_domain: bool = False
    expected_gain_options: ExpectedGainOptions = field(default_factory=ExpectedGainOptions)

    @property
    def n(self) -> int:
        return len(self.tags)

    @property
    def ppm(self) -> QuadraticScorer:
        """The scorer, for the steps that read it (``route`` refuses a strategy that needs one without it)."""
        if self.scorer is None:
            raise NotReady("this step needs the predictor's PPM")
        return self.scorer

    def rng(self, stream: int) -> np.random.Generator:
        """An independent generator per use, so adding a draw elsewhere never shifts another's."""
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFFFFFFFFFF, stream])

    def check_deadline(self) -> None:
        """Stop between rounds when the call expired or was cancelled (its caller left)."""
        if self.deadline is not None:
            self.deadline.check(what="routing")


def static_gains(ctx: RoutingContext) -> np.ndarray:
    """``f(t_i) - f(0)`` for every instance, from the PPM's quadratic form -> (n,) float64."""
    _, w, q = ctx.ppm.quadratic_form()
    return quadratic_static(PackedTags(ctx.tags), w, q, float(ctx.n))


def quadratic_static(packed: PackedTags, w: np.ndarray, q: np.ndarray, p: float) -> np.ndarray:
    """``w.t / P + t^T Q t / P^2`` per row -> (n,) float64 (table look-ups, see ``packed``)."""
    return packed.dot(w) / p + packed.quad_form(q) / p**2


def select_by_gain(ctx: RoutingContext, priority: np.ndarray, only_positive: bool = False) -> np.ndarray:
    """Mask of the best instances by ``priority`` under a count or cost budget."""
    budget = ctx.budget
    mask = np.zeros(ctx.n, dtype=bool)
    if budget.kind == "count":
        k = budget.exact_count
        if only_positive:
            k = min(k, int(np.count_nonzero(priority > 0)))
        mask[top_indices(priority, k)] = True
        return mask
    order = density_order(priority, budget.costs)
    if only_positive:
        order = order[priority[order] > 0]
    mask[fill_in_order(order, budget.costs, budget.cost_cap)] = True
    return mask


def mask_from_order(ctx: RoutingContext, order: np.ndarray) -> np.ndarray:
    """Take instances in ``order`` until the count or cost budget is full."""
    mask = np.zeros(ctx.n, dtype=bool)
    if ctx.budget.kind == "count":
        mask[order[: ctx.budget.exact_count]] = True
    else:
        mask[fill_in_order(order, ctx.budget.costs, ctx.budget.cost_cap)] = True
    return mask


def require_finite_budget(ctx: RoutingContext, name: str) -> None:
    if ctx.budget.kind == "auto":
        raise InvalidInput(FieldViolation("config.budget.auto", f"strategy {name!r} needs a fraction, count or cost budget"))


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Rank of each value in [0, 1] (ties share the lowest rank)."""
    n = len(values)
    if n <= 1:
        return np.ones(n)
    # One sort, then each run of equal values takes its first position (a million binary searches
    # with random access cost 3x the sort: benchmarks/bench_router_scale.py).
    order = np.argsort(values, kind="stable")
    sorted_vals = np.asarray(values)[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n)
    ranks[order] = first
    return ranks / (n - 1)


def marginal_gains(scorer: QuadraticScorer, tag_matrix: np.ndarray, human_mask: np.ndarray) -> np.ndarray:
    """Each instance's gain against a fixed mix -> (n,) float64.

    Routed instances: ``f(c) - f(c - t_i)`` (what removing it would lose); the others:
    ``f(c + t_i) - f(c)`` (what adding it would win). ``P = n``.
    """
    n = len(tag_matrix)
    mask = np.asarray(human_mask, dtype=bool)
    counts = mix_counts(tag_matrix, mask)
    out = np.zeros(n)
    out_idx = np.flatnonzero(~mask)
    if len(out_idx):
        out[out_idx] = scorer.gains(np.asarray(tag_matrix[out_idx]), counts, n)
    in_idx = np.flatnonzero(mask)
    if len(in_idx):
        uniq, inverse = unique_rows(tag_matrix[in_idx])
        scores = scorer.score(np.vstack([counts[None, :], counts[None, :] - uniq]), n)
        out[in_idx] = (scores[0] - scores[1:])[inverse]
    return out


def per_unit_cost(ctx: RoutingContext, score: np.ndarray) -> np.ndarray:
    """``score`` per unit of (mean-normalised) human cost under a cost budget, as ``density_order`` ranks:
    positive scores divided by the cost, the others unchanged (a positive always outranks them). Under a
    count or auto budget, ``score`` as it is. -> (n,) float64."""
    score = np.asarray(score, dtype=np.float64)
    if ctx.budget.kind != "cost" or not len(score):
        return score
    costs = np.asarray(ctx.budget.costs, dtype=np.float64)
    relative = costs / max(float(costs.mean()), 1e-12)
    return np.where(score > 0, score / relative, score)
