"""Routing strategies: pure, vectorised functions from a tag matrix and a budget to a human mask.

Inputs every strategy sees (:class:`RoutingContext`):

* ``tags`` (n, V) uint8 0/1: the tag matrix, columns in the order the scorer reads (the
  canonical vocabulary in production);
* ``budget``: a :class:`~hybridpref.router.budget.ResolvedBudget` (count, cost or auto);
* ``scorer``: a :class:`~hybridpref.router.scoring.MixScorer` (the PPM), ``pool_size = n``;
* ``seed``: every random choice derives from it; same inputs + seed = same decisions;
* judge signals: ``signals`` (:class:`~hybridpref.common.signals.JudgeSignals`: label, p_a,
  order flip, agreement with other judges) and/or the older ``judge_confidence`` (n,) in [0, 1]
  and ``judge_inconsistent`` (n,) bool;
* ``expected_gain`` (n,): expected label corrections per human label, from the bundle's
  expected-correction model (:mod:`hybridpref.routing_model.correction`);
* ``ppm_in_domain``: whether the batch is in the PPM's training domain (``domain.json``).

Strategies (see :data:`STRATEGIES`): ``all_human``, ``all_lm``, ``random`` (baselines);
``topk``, ``simulated``, ``optimal_pos`` (the paper); ``greedy`` (marginal gain under the
quadratic PPM, re-evaluated as the mix grows); ``expected_gain`` (expected corrections per unit
of human cost); ``judge_doubt`` (the judge's own signals only); ``hybrid`` (expected gain, the
PPM's gain breaking ties when the batch is in the PPM's domain; :data:`DEFAULT_STRATEGY`);
``judge_aware`` (PPM gain rank plus the judge's doubt from its real signals). Call :func:`route`; for the response use :func:`predicted_baselines` (summary scores)
and :func:`explain` (top tags per instance).

Budgets per strategy:

* count: exactly ``count`` instances (``optimal_pos``: at most, positive gains only);
* cost: instances in the strategy's order (gain per unit cost for predictor strategies) while
  they fit, skipping the ones that do not (greedy knapsack fill); the total never exceeds it;
* auto: ``topk``/``optimal_pos`` route every positive solo gain, ``greedy`` stops when no
  marginal gain is positive, ``judge_aware``/``judge_doubt`` route the judge's doubts (see
  :class:`JudgeAwareOptions`), ``expected_gain``/``hybrid`` route every instance whose expected
  gain per unit cost exceeds ``ExpectedGainOptions.auto_threshold`` (a human label is worth buying
  when it is expected to fix at least that many labels per unit of cost; costs are normalised to
  mean 1); ``random``/``simulated`` reject it (``InvalidInput``);
* ``all_human``/``all_lm`` ignore the budget (they are the reference points).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import DeadlineExceeded, FieldViolation, InvalidInput, NotReady
from hybridpref.common.signals import JudgeSignals
from hybridpref.router.budget import ResolvedBudget
from hybridpref.router.packed import PackedTags
from hybridpref.router.scoring import CHUNK_ROWS, MixScorer, mix_counts, unique_rows
from hybridpref.router.selection import density_order, fill_in_order, top_indices


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
    million instances take ``min_rounds`` rounds. ``remote_rounds`` caps rounds (= ``gains``
    round trips) for scorers without ``quadratic_form``.
    """

    min_rounds: int = 32
    exact_work: int = 20_000_000
    remote_rounds: int = 16


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
    scorer: MixScorer | None
    seed: int
    judge_confidence: np.ndarray | None = None
    judge_inconsistent: np.ndarray | None = None
    simulated_candidates: int = 500
    simulated_sampler: str = "tag_walk"
    greedy: GreedyOptions = field(default_factory=GreedyOptions)
    judge_aware: JudgeAwareOptions = field(default_factory=JudgeAwareOptions)
    # The call's Deadline (expiry and cancellation), or a time.monotonic() instant; work stops after it.
    deadline: Deadline | float | None = None
    info: dict[str, float] = field(default_factory=dict)  # strategy diagnostics -> RoutingResult.info
    expected_gain: np.ndarray | None = None
    signals: JudgeSignals | None = None
    ppm_in_domain: bool = False
    expected_gain_options: ExpectedGainOptions = field(default_factory=ExpectedGainOptions)

    @property
    def n(self) -> int:
        return len(self.tags)

    def rng(self, stream: int) -> np.random.Generator:
        """An independent generator per use, so adding a draw elsewhere never shifts another's."""
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFFFFFFFFFF, stream])

    def check_deadline(self) -> None:
        """Stop between rounds when the call expired or was cancelled (its caller left)."""
        if isinstance(self.deadline, Deadline):
            self.deadline.check(what="routing")
        elif self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("routing ran past the request deadline")


@dataclass(frozen=True)
class StrategySpec:
    name: str
    fn: Callable[[RoutingContext], tuple[np.ndarray, np.ndarray]]
    needs_predictor: bool
    needs_judge_first: bool
    description: str


# ---------------------------------------------------------------- baselines


def _all_human(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(ctx.n, dtype=bool), np.zeros(ctx.n)


def _all_lm(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(ctx.n, dtype=bool), np.zeros(ctx.n)


def _random(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    _require_finite_budget(ctx, "random")
    order = ctx.rng(1).permutation(ctx.n)
    return _mask_from_order(ctx, order), np.zeros(ctx.n)


# ---------------------------------------------------------------- paper strategies


def _topk(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Gain of each instance alone, ``f(t_i) - f(0)``; route the best under the budget."""
    gains = _static_gains(ctx)
    if ctx.budget.kind == "auto":
        return gains > 0, gains
    return _select_by_gain(ctx, gains), gains


def _optimal_pos(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Every instance with a positive solo gain; a count/cost budget caps it (best first)."""
    gains = _static_gains(ctx)
    positive = gains > 0
    if ctx.budget.kind == "auto":
        return positive, gains
    return _select_by_gain(ctx, np.where(positive, gains, -np.inf), only_positive=True), gains


def _simulated(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """The paper's simulation: draw N candidate mixes at the budget, score all, keep the best.

    Candidates are drawn like the paper's knapsack (``run_knapsack``): walk the tags in a
    random order, adding each tag's not-yet-added instances in random order until the budget
    is full. Under a count budget that means: whole tags in order, then a random part of the
    last one, so a candidate costs a few boolean ORs over n. Instances with no tag come last.
    ``simulated_sampler="uniform"`` draws plain uniform subsets instead. Candidates are scored
    in chunks with one ``scorer.score`` call each (ties: the earlier candidate wins).
    """
    _require_finite_budget(ctx, "simulated")
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
        scores = np.asarray(ctx.scorer.score(counts, ctx.n), dtype=np.float64)
        i = int(np.argmax(scores))
        if scores[i] > best_score:
            best_score, best_mask = float(scores[i]), masks[i]
    ctx.info.update(candidates=float(n_cand), best_candidate_score=best_score)
    return best_mask, marginal_gains(ctx.scorer, ctx.tags, best_mask)


def _candidate_mask(ctx: RoutingContext, rng: np.random.Generator, columns: np.ndarray) -> np.ndarray:
    """One candidate mix (n,) bool at the budget."""
    n, budget = ctx.n, ctx.budget
    if ctx.simulated_sampler == "uniform":
        return _mask_from_order(ctx, rng.permutation(n))
    tag_order = rng.permutation(len(columns))
    if budget.kind != "count":  # cost: the full walk order, then the knapsack fill with skipping
        return _mask_from_order(ctx, _tag_walk_order(rng, columns, tag_order))
    mask = np.zeros(n, dtype=bool)
    taken, k = 0, budget.count
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


# ---------------------------------------------------------------- greedy


def _greedy(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Greedy marginal gain: route the instance whose human label raises ``f`` most given
    the instances already routed, then re-evaluate.

    Under the quadratic PPM ``f(x) = b + w.x + x^T Q x`` (``x = c / P``) the gain of instance
    ``t`` against the current counts ``c`` is ``a_t + t . u`` with the static part
    ``a_t = w.t / P + t^T Q t / P^2`` and ``u = (2 / P^2) Q c``. Only the V-vector ``u`` changes
    as the mix grows, so re-evaluating is one (rows, V) x (V,) product. Instances are routed
    in rounds (see :class:`GreedyOptions`); small problems run exact one-at-a-time greedy.

    Lazy updates: the O(n V^2) static part is computed once; afterwards the gains are
    updated through ``u`` alone, O(n V) per round, instead of re-scoring n mixes
    ``f(c + t_i)`` from scratch (O(n V^2) each round). (A bound-based variant that re-evaluates
    only a window of the best rows was tried and lost: under a PPM with real interactions the
    gains re-rank enough that the window kept failing its bound; see benchmarks/RESULTS.md.)

    Without a quadratic form each round is one ``scorer.gains`` call over the distinct tag rows.
    """
    state = _GreedyState.create(ctx)
    rounds = state.planned_rounds()
    for r in range(10 * ctx.n + 10):  # hard bound; every round routes >= 1 or stops
        ctx.check_deadline()
        take, gains = state.next_round(rounds_left=max(1, rounds - r))
        if not len(take):
            break
        state.route(take, gains)
    chosen, out = state.results()
    ctx.info.update(rounds=float(r + 1), full_evaluations=float(state.full_evaluations))
    if ctx.budget.kind == "count" and state.n_chosen != ctx.budget.count:  # pragma: no cover - defensive
        raise AssertionError("greedy did not fill the count budget")
    return chosen, out


def _greedy_pick(ctx: RoutingContext, state: _GreedyState, gains: np.ndarray, costs: np.ndarray, rounds_left: int) -> tuple[np.ndarray, int]:
    """One round's picks among candidates with ``gains`` (routed ones at -inf) and ``costs``
    -> (indices into ``gains`` of the picks, the step that was asked for)."""
    budget = ctx.budget
    if budget.kind == "count":
        remaining = budget.count - state.n_chosen
        step = math.ceil(remaining / rounds_left) if remaining > 0 else 0
        return top_indices(gains, step), step
    if budget.kind == "auto":
        step = max(1, math.ceil(state.auto_step_base / max(1, state.planned_rounds())))
        positive = np.where(gains > 0, gains, -np.inf)
        return top_indices(positive, min(step, int(np.count_nonzero(gains > 0)))), step
    remaining = budget.cost_limit - state.spent
    allowance = remaining if rounds_left <= 1 else remaining / rounds_left
    order = density_order(gains, costs)
    order = order[np.isfinite(gains[order])]
    take = fill_in_order(order, costs, allowance)
    if not len(take):  # the round's share was smaller than any single cost: take the best that fits at all
        take = fill_in_order(order, costs, remaining)[:1]
    return take, len(take)


class _GreedyState:
    """Counts, routed set and gain function of a greedy run."""

    def __init__(self, ctx: RoutingContext):
        self.ctx = ctx
        self.n = ctx.n
        self.chosen = np.zeros(self.n, dtype=bool)
        self.gain_at_pick = np.zeros(self.n)
        self.counts = np.zeros(ctx.tags.shape[1])
        self.n_chosen = 0
        self.spent = 0.0
        self.quad = ctx.scorer.quadratic_form()
        self.auto_step_base = 0
        self.scale = 2.0 / float(max(1, self.n)) ** 2
        self.full_evaluations = 0

    @classmethod
    def create(cls, ctx: RoutingContext) -> _GreedyState:
        state = cls(ctx)
        if state.quad is not None:
            _, w, q = state.quad
            state.q = np.asarray(q, dtype=np.float64)
            state.packed = PackedTags(ctx.tags)  # 12 bytes a row; each round is 12 table look-ups
            state.static = _quadratic_static(state.packed, w, q, float(ctx.n))
        else:
            state.uniq, state.inverse = unique_rows(ctx.tags)
        if ctx.budget.kind == "auto":
            state.auto_step_base = int(np.count_nonzero(state.gains_all() > 0))
        return state

    def planned_rounds(self) -> int:
        opts, budget = self.ctx.greedy, self.ctx.budget
        if budget.kind == "count":
            target = budget.count
        elif budget.kind == "auto":
            target = max(1, self.auto_step_base)
        else:  # cost: rounds in proportion to how many instances the budget buys on average
            target = max(1, min(self.n, int(budget.cost_limit / max(1e-12, float(np.median(budget.costs))))))
        if self.quad is None:
            return max(1, min(target, opts.remote_rounds))
        exact_rounds = opts.exact_work // max(1, self.n)
        return max(1, min(target, max(opts.min_rounds, exact_rounds)))

    def gains_all(self) -> np.ndarray:
        """Gains of every row against the current mix (routed rows included) -> (n,) float64."""
        self.full_evaluations += 1
        if self.quad is None:
            return np.asarray(self.ctx.scorer.gains(self.uniq, self.counts, self.n), dtype=np.float64)[self.inverse]
        if not self.counts.any():
            return self.static.copy()
        gains = self.packed.dot(self.scale * (self.q @ self.counts))  # u = (2 / P^2) Q c: all that changes
        gains += self.static
        return gains

    def next_round(self, rounds_left: int) -> tuple[np.ndarray, np.ndarray]:
        """The next round's picks (row indices) and their gains."""
        gains = self.gains_all()
        gains[self.chosen] = -np.inf
        take, _ = _greedy_pick(self.ctx, self, gains, self.ctx.budget.costs, rounds_left)
        return take, gains[take]

    def route(self, idx: np.ndarray, gains: np.ndarray) -> None:
        self.chosen[idx] = True
        self.gain_at_pick[idx] = gains
        self.n_chosen += len(idx)
        self.spent += float(self.ctx.budget.costs[idx].sum())
        self.counts += self.ctx.tags[idx].sum(axis=0, dtype=np.int64)

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """(human mask, gains); unrouted rows get their gain against the final mix."""
        final = self.gains_all()
        return self.chosen, np.where(self.chosen, self.gain_at_pick, final)


def _quadratic_static(packed: PackedTags, w: np.ndarray, q: np.ndarray, p: float) -> np.ndarray:
    """``w.t / P + t^T Q t / P^2`` per row -> (n,) float64 (table look-ups, see ``packed``)."""
    return packed.dot(w) / p + packed.quad_form(q) / p**2


# ---------------------------------------------------------------- judge-aware


def _judge_aware(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """PPM gain plus the judge's doubt (see :class:`JudgeAwareOptions`).

    An LM judge that flips its verdict when the responses swap places, or answers with low
    confidence, is likely wrong there: a human label is worth more on exactly those
    instances. Works without a scorer (then the judge's doubt alone decides).
    """
    opts = ctx.judge_aware
    doubt = _doubt(ctx)
    gains = _static_gains(ctx) if ctx.scorer is not None else np.zeros(ctx.n)
    if ctx.budget.kind == "auto":
        mask = doubt >= opts.auto_doubt
        if ctx.scorer is not None:
            mask &= gains >= 0
        return mask, gains
    gain_rank = _percentile_rank(gains) if ctx.scorer is not None else np.zeros(ctx.n)
    weight = opts.judge_weight if ctx.scorer is not None else 1.0
    priority = (1.0 - weight) * gain_rank + weight * doubt
    return _select_by_gain(ctx, priority), gains


# ---------------------------------------------------------------- expected correction


def _expected_gain(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Route by expected label corrections per unit of human cost (the correction model's
    ``p_lm_wrong - p_human_wrong``); ties broken by a seeded random rank. Returns the expected
    gains as ``gains``."""
    gain = _require_expected_gain(ctx)
    tie = ctx.rng(11).permutation(ctx.n) / max(1, ctx.n - 1)
    return _route_by_expected(ctx, gain, tie), gain


def _hybrid(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """The default: ``expected_gain``, with the PPM's solo gain (min-max scaled) breaking ties when
    a scorer is given and ``ppm_in_domain``; otherwise exactly ``expected_gain``. The PPM never
    overrides a distinct expected gain: cross-pool it did not transfer (DESIGN.md section 7)."""
    gain = _require_expected_gain(ctx)
    if ctx.scorer is not None and ctx.ppm_in_domain:
        ppm = _static_gains(ctx)
        span = float(np.ptp(ppm)) if len(ppm) else 0.0
        tie = (ppm - ppm.min()) / span if span > 0 else np.zeros(ctx.n)  # min-max, not a rank: no O(n log n) sort
        ctx.info["ppm_tie_breaker"] = 1.0
    else:
        tie = ctx.rng(11).permutation(ctx.n) / max(1, ctx.n - 1)
        ctx.info["ppm_tie_breaker"] = 0.0
    return _route_by_expected(ctx, gain, tie), gain


def _route_by_expected(ctx: RoutingContext, gain: np.ndarray, tie: np.ndarray) -> np.ndarray:
    opts = ctx.expected_gain_options
    priority = gain + opts.tie_scale * tie
    if ctx.budget.kind == "auto":
        costs = ctx.budget.costs
        rel = gain if costs is None else gain / (np.asarray(costs, dtype=np.float64) / max(float(np.mean(costs)), 1e-12))
        return rel > opts.auto_threshold
    return _select_by_gain(ctx, priority)


def _judge_doubt(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Route where the judge doubts itself most (:func:`signal_doubt`; no predictor, no model):
    no verdict or an order flip first, then disagreement between several judges, then low
    confidence. Ties broken by a seeded random rank; under auto budgets, doubt >= ``auto_doubt``."""
    doubt = _doubt(ctx)
    if ctx.budget.kind == "auto":
        return doubt >= ctx.judge_aware.auto_doubt, doubt
    tie = ctx.rng(12).permutation(ctx.n) / max(1, ctx.n - 1)
    return _select_by_gain(ctx, doubt + 1e-6 * tie), doubt


def signal_doubt(signals: JudgeSignals) -> np.ndarray:
    """Doubt in the LM label from the judge's signals -> (n,) float64 in [0, 1].

    1 where the judge gave no verdict (tie, unparsed) or flipped with the presentation order;
    otherwise the largest of ``1 - agreement`` with other judges (when recorded) and
    ``1 - |2 p_a - 1|`` (when the judge gives a probability), scaled to [0, 0.9] so a verdict never
    outranks a missing one; 0 when neither is known.
    """
    label = np.asarray(signals.label)
    agreement = np.asarray(signals.agreement, dtype=np.float64)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    disagree = np.where(np.isnan(agreement), 0.0, 1.0 - np.nan_to_num(agreement, nan=1.0))
    unsure = np.where(np.isnan(p_a), 0.0, 1.0 - np.abs(2.0 * np.nan_to_num(p_a, nan=0.5) - 1.0))
    doubt = 0.9 * np.clip(np.maximum(disagree, unsure), 0.0, 1.0)
    return np.where((label == 0) | np.asarray(signals.order_flip, dtype=bool), 1.0, doubt)


def _doubt(ctx: RoutingContext) -> np.ndarray:
    """The judge's doubt: from ``signals`` when given, else from confidence / inconsistency."""
    if ctx.signals is not None:
        return signal_doubt(ctx.signals)
    return judge_doubt(ctx.judge_confidence, ctx.judge_inconsistent, ctx.judge_aware.inconsistent_doubt)


def _require_expected_gain(ctx: RoutingContext) -> np.ndarray:
    if ctx.expected_gain is None:
        raise NotReady("this strategy needs the expected-correction model's gains (a bundle with correction.onnx and the judge's signals)")
    return np.asarray(ctx.expected_gain, dtype=np.float64)


def judge_doubt(confidence: np.ndarray, inconsistent: np.ndarray | None, inconsistent_doubt: float = 0.75) -> np.ndarray:
    """Probability-like doubt in the LM label, in [0, 1]: ``1 - confidence``, at least
    ``inconsistent_doubt`` where the judge was order-inconsistent -> (n,) float64."""
    doubt = 1.0 - np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    if inconsistent is not None:
        doubt = np.where(np.asarray(inconsistent, dtype=bool), np.maximum(doubt, inconsistent_doubt), doubt)
    return doubt


def _percentile_rank(values: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------- shared helpers


def _static_gains(ctx: RoutingContext) -> np.ndarray:
    """``f(t_i) - f(0)`` for every instance, via the quadratic form when there is one."""
    form = ctx.scorer.quadratic_form()
    if form is not None:
        _, w, q = form
        return _quadratic_static(PackedTags(ctx.tags), w, q, float(ctx.n))
    uniq, inverse = unique_rows(ctx.tags)
    return np.asarray(ctx.scorer.gains(uniq, None, ctx.n), dtype=np.float64)[inverse]


def _select_by_gain(ctx: RoutingContext, priority: np.ndarray, only_positive: bool = False) -> np.ndarray:
    """Mask of the best instances by ``priority`` under a count or cost budget."""
    budget = ctx.budget
    mask = np.zeros(ctx.n, dtype=bool)
    if budget.kind == "count":
        k = budget.count
        if only_positive:
            k = min(k, int(np.count_nonzero(priority > 0)))
        mask[top_indices(priority, k)] = True
        return mask
    order = density_order(priority, budget.costs)
    if only_positive:
        order = order[priority[order] > 0]
    mask[fill_in_order(order, budget.costs, budget.cost_limit)] = True
    return mask


def _mask_from_order(ctx: RoutingContext, order: np.ndarray) -> np.ndarray:
    """Take instances in ``order`` until the count or cost budget is full."""
    mask = np.zeros(ctx.n, dtype=bool)
    if ctx.budget.kind == "count":
        mask[order[: ctx.budget.count]] = True
    else:
        mask[fill_in_order(order, ctx.budget.costs, ctx.budget.cost_limit)] = True
    return mask


def _require_finite_budget(ctx: RoutingContext, name: str) -> None:
    if ctx.budget.kind == "auto":
        raise InvalidInput(FieldViolation("config.budget.auto", f"strategy {name!r} needs a fraction, count or cost budget"))


def marginal_gains(scorer: MixScorer, tag_matrix: np.ndarray, human_mask: np.ndarray) -> np.ndarray:
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


STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec("all_human", _all_human, False, False, "every instance to humans (baseline; budget ignored)"),
        StrategySpec("all_lm", _all_lm, False, False, "every instance to the LM judge (baseline; budget ignored)"),
        StrategySpec("random", _random, False, False, "a seeded random subset at the budget (baseline)"),
        StrategySpec("topk", _topk, True, False, "paper: the instances with the largest solo gain f(t_i) - f(0)"),
        StrategySpec("simulated", _simulated, True, False, "paper: best of N tag-walk candidate mixes at the budget"),
        StrategySpec("optimal_pos", _optimal_pos, True, False, "paper: every instance with a positive solo gain"),
        StrategySpec("greedy", _greedy, True, False, "marginal gain under the quadratic PPM, re-evaluated as the mix grows"),
        StrategySpec("judge_aware", _judge_aware, False, True, "PPM gain rank plus the judge's doubt (its real signals: no verdict, order flips, disagreement, confidence)"),
        StrategySpec("expected_gain", _expected_gain, False, True, "expected label corrections per unit of human cost (expected-correction model)"),
        StrategySpec("judge_doubt", _judge_doubt, False, True, "the judge's own doubt: no verdict / order flip, disagreement between judges, low confidence"),
        StrategySpec("hybrid", _hybrid, False, True, "expected_gain, the PPM's gain breaking ties when the batch is in the PPM's domain"),
    )
}
# Chosen by the cross-pool evaluation (docs/EVALUATION.md).
DEFAULT_STRATEGY = "hybrid"
# Strategies that read the expected-correction model's gains (RoutingContext.expected_gain).
NEEDS_EXPECTED_GAIN = frozenset({"expected_gain", "hybrid"})


def needs_predictor(strategy: str) -> bool:
    """Whether ``strategy`` cannot run without a scorer (judge_aware uses one when given)."""
    return _spec(strategy).needs_predictor


def needs_judge_first(strategy: str) -> bool:
    """Whether the judge must label every instance *before* routing (else only LM-routed ones)."""
    return _spec(strategy).needs_judge_first


def _spec(strategy: str) -> StrategySpec:
    spec = STRATEGIES.get(strategy or DEFAULT_STRATEGY)
    if spec is None:
        raise InvalidInput(FieldViolation("config.strategy", f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"))
    return spec


def route(
    strategy: str,
    tag_matrix: np.ndarray,
    budget: ResolvedBudget,
    *,
    scorer: MixScorer | None,
    seed: int,
    judge_confidence: np.ndarray | None = None,
    judge_inconsistent: np.ndarray | None = None,
    simulated_candidates: int = 500,
    simulated_sampler: str = "tag_walk",
    greedy: GreedyOptions | None = None,
    judge_aware: JudgeAwareOptions | None = None,
    deadline: Deadline | float | None = None,
    expected_gain: np.ndarray | None = None,
    signals: JudgeSignals | None = None,
    ppm_in_domain: bool = False,
    expected_gain_options: ExpectedGainOptions | None = None,
) -> RoutingResult:
    """Route a batch: decide, per instance, human (True) or LM (False).

    ``tag_matrix`` (n, V) 0/1 (uint8 or bool; V = the scorer's width); ``budget`` from
    :func:`~hybridpref.router.budget.resolve_budget` for the same n; ``strategy`` "" means
    :data:`DEFAULT_STRATEGY`. ``deadline`` is a ``time.monotonic()`` instant; long strategies
    check it between rounds and raise ``DeadlineExceeded``.

    Raises ``InvalidInput`` (unknown strategy, bad shapes, auto budget for random/simulated),
    ``NotReady`` (the strategy needs a scorer, or the judge's signals, that were not given).
    """
    spec = _spec(strategy)
    tags = _check_tags(tag_matrix, budget)
    if spec.needs_predictor and scorer is None:
        raise NotReady(f"strategy {spec.name!r} needs the predictor (no model bundle loaded or predictor unreachable)")
    if scorer is not None:
        _check_width(scorer, tags.shape[1])
    if spec.name in NEEDS_EXPECTED_GAIN:
        _check_expected_gain(expected_gain, len(tags))
    elif spec.needs_judge_first:
        _check_judge(judge_confidence, judge_inconsistent, len(tags), signals)
    if simulated_sampler not in ("tag_walk", "uniform"):
        raise InvalidInput(FieldViolation("simulated_sampler", f"use 'tag_walk' or 'uniform', got {simulated_sampler!r}"))
    ctx = RoutingContext(
        tags, budget, scorer, int(seed), judge_confidence, judge_inconsistent,
        int(simulated_candidates) or 500, simulated_sampler, greedy or GreedyOptions(),
        judge_aware or JudgeAwareOptions(), deadline, expected_gain=expected_gain, signals=signals,
        ppm_in_domain=bool(ppm_in_domain), expected_gain_options=expected_gain_options or ExpectedGainOptions(),
    )
    with _one_blas_thread():
        mask, gains = spec.fn(ctx)
        predicted = None
        if scorer is not None and len(tags):
            predicted = float(scorer.score(mix_counts(tags, mask)[None, :], len(tags))[0])
    return RoutingResult(np.asarray(mask, dtype=bool), np.asarray(gains, dtype=np.float64), spec.name, predicted, dict(ctx.info))


def _one_blas_thread() -> AbstractContextManager[object]:
    """Routing runs with one BLAS thread: its heavy passes are table look-ups (``packed``), and
    the BLAS products left are small, where thread wake-ups cost more than they save (measured:
    3.5x slower for 7,000 x 90 on 2 busy cores; 78 tiny table products went from 0.1 s to 1.9 s).
    Requests run concurrently in the service, which is where the cores go."""
    return threadpool_limits(limits=1, user_api="blas")


def _check_tags(tag_matrix: np.ndarray, budget: ResolvedBudget) -> np.ndarray:
    tags = np.asarray(tag_matrix)
    if tags.ndim != 2:
        raise InvalidInput(FieldViolation("tag_matrix", f"expected a 2-D (instances, tags) matrix, got shape {tags.shape}"))
    if len(tags) != budget.n:
        raise InvalidInput(FieldViolation("tag_matrix", f"{len(tags)} rows but the budget was resolved for {budget.n} instances"))
    if tags.dtype != np.uint8:
        if tags.dtype != bool and len(tags) and not np.isin(tags, (0, 1)).all():
            raise InvalidInput(FieldViolation("tag_matrix", "tags must be 0/1"))
        tags = tags.astype(np.uint8)
    elif len(tags) and tags.max(initial=0) > 1:
        raise InvalidInput(FieldViolation("tag_matrix", "tags must be 0/1"))
    return tags


def _check_width(scorer: MixScorer, width: int) -> None:
    form = scorer.quadratic_form()
    expected = len(form[1]) if form is not None else getattr(scorer, "num_tags", None)
    if expected is not None and expected != width:
        raise InvalidInput(FieldViolation("tag_matrix", f"has {width} tag columns; the predictor reads {expected}"))


def _check_expected_gain(gain: np.ndarray | None, n: int) -> None:
    if gain is None:
        raise NotReady("this strategy needs the expected-correction model's gains for every instance (bundle with correction.onnx; run the judge first)")
    g = np.asarray(gain, dtype=np.float64)
    if g.shape != (n,) or not np.isfinite(g).all() or (np.abs(g) > 1).any():
        raise InvalidInput(FieldViolation("expected_gain", f"expected ({n},) finite values in [-1, 1]"))


def _check_judge(confidence: np.ndarray | None, inconsistent: np.ndarray | None, n: int, signals: JudgeSignals | None = None) -> None:
    if signals is not None:
        if len(signals) != n:
            raise InvalidInput(FieldViolation("signals", f"{len(signals)} rows for {n} instances"))
        return
    if confidence is None:
        raise NotReady("this strategy needs the judge's signals (or confidence) for every instance; run the judge first")
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.shape != (n,) or not np.isfinite(conf).all() or (conf < 0).any() or (conf > 1).any():
        raise InvalidInput(FieldViolation("judge_confidence", f"expected ({n},) values in [0, 1]"))
    if inconsistent is not None and np.shape(inconsistent) != (n,):
        raise InvalidInput(FieldViolation("judge_inconsistent", f"expected ({n},) booleans"))


def predicted_baselines(
    scorer: MixScorer,
    tag_matrix: np.ndarray,
    human_mask: np.ndarray,
    seed: int,
    n_random: int = 16,
) -> dict[str, float]:
    """Predicted scores for the response summary -> ``{"chosen", "all_human", "all_lm", "random"}``.

    ``random`` is the mean predicted score of random mixes with as many instances as
    ``human_mask`` routes. With a quadratic form it is exact (the expectation over all such
    mixes, in closed form); otherwise the mean of ``n_random`` seeded draws.
    """
    tags = np.asarray(tag_matrix)
    n = len(tags)
    mask = np.asarray(human_mask, dtype=bool)
    m = int(mask.sum())
    total = mix_counts(tags, np.ones(n, dtype=bool))
    base = scorer.score(np.vstack([mix_counts(tags, mask), total, np.zeros_like(total)]), n)
    out = {"chosen": float(base[0]), "all_human": float(base[1]), "all_lm": float(base[2])}
    form = scorer.quadratic_form()
    if form is not None:
        out["random"] = _expected_random_quadratic(form, tags, total, m)
    else:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 7])
        draws = []
        for _ in range(max(1, n_random)):
            pick = np.zeros(n, dtype=bool)
            pick[rng.choice(n, m, replace=False)] = True
            draws.append(mix_counts(tags, pick))
        out["random"] = float(scorer.score(np.vstack(draws), n).mean())
    return out


def _expected_random_quadratic(form: tuple[float, np.ndarray, np.ndarray], tags: np.ndarray, total: np.ndarray, m: int) -> float:
    """E[f(c / n)] over uniform m-subsets: ``f(E x) + tr(Q Cov x)`` with the sampling-without-
    replacement covariance ``Cov c = m (n - m) / (n - 1) * S`` (S: population covariance of rows)."""
    b, w, q = form
    n = len(tags)
    if n == 0:
        return float(b)
    mean_row = total / n
    mean_x = mean_row * m / n
    value = b + w @ mean_x + mean_x @ q @ mean_x
    if n > 1 and 0 < m < n:
        gram = np.zeros((tags.shape[1], tags.shape[1]))
        for start in range(0, n, CHUNK_ROWS):
            block = np.asarray(tags[start : start + CHUNK_ROWS], dtype=np.float32)
            gram += (block.T @ block).astype(np.float64)
        pop_cov = gram / n - np.outer(mean_row, mean_row)
        cov_x = pop_cov * (m * (n - m) / (n - 1)) / n**2
        value += float(np.sum(q * cov_x))
    return float(value)


def top_contributions(
    contributions: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest-|contribution| tags per instance from an (n, V) contribution matrix
    (e.g. ``QuadraticScorer.contributions``) -> ``(tag_idx (n, k) int64, value (n, k))``,
    largest first (ties: lower tag index); ``-1`` / 0.0 pad rows with fewer non-zero
    contributions. Map ``tag_idx`` to names with ``vocabulary.TAG_NAMES``."""
    contrib = np.asarray(contributions, dtype=np.float64)
    n, v = contrib.shape
    k = max(0, min(int(k), v))
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.zeros((n, k))
    if k == 0 or n == 0:
        return idx, val
    mag = np.abs(contrib)
    part = np.argpartition(-mag, k - 1, axis=1)[:, :k] if k < v else np.tile(np.arange(v), (n, 1))
    # order the k by |value| desc, then tag index asc
    keys = np.take_along_axis(mag, part, axis=1)
    order = np.lexsort((part, -keys), axis=1)
    chosen = np.take_along_axis(part, order, axis=1)
    picked = np.take_along_axis(contrib, chosen, axis=1)
    nonzero = picked != 0
    idx[nonzero] = chosen[nonzero]
    val[nonzero] = picked[nonzero]
    return idx, val


def explain(
    scorer: MixScorer,
    tag_matrix: np.ndarray,
    human_mask: np.ndarray,
    top_k: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Top contributing tags of each instance's gain against the chosen mix, for a vendor to read.

    Per tag ``j`` of instance ``i`` (quadratic PPM, ``c`` = counts of the mix without ``i``):
    ``w_j / P + (2 Q c + Q t_i)_j / P^2``; the contributions of a row sum to its
    :func:`marginal_gains` value. Returns ``(tag_idx (n, k), value (n, k))`` as
    :func:`top_contributions`; all ``-1`` when the scorer has no quadratic form (then use the
    predictor's own ``InstanceGains`` explanations). Memory is bounded by row chunks.
    """
    tags = np.asarray(tag_matrix)
    n, v = tags.shape
    k = max(0, min(int(top_k), v))
    form = scorer.quadratic_form()
    if form is None or n == 0:
        return np.full((n, k), -1, dtype=np.int64), np.zeros((n, k))
    _, w, q = form
    p = float(n)
    mask = np.asarray(human_mask, dtype=bool)
    qc = q @ mix_counts(tags, mask)
    idx = np.empty((n, k), dtype=np.int64)
    val = np.empty((n, k))
    for start in range(0, n, CHUNK_ROWS):
        t = np.asarray(tags[start : start + CHUNK_ROWS], dtype=np.float64)
        tq = t @ q
        # routed rows: the mix without them is c - t, so 2 Q (c - t) + Q t = 2 Q c - Q t
        sign = np.where(mask[start : start + len(t)], -1.0, 1.0)[:, None]
        contrib = t * (w / p + (2.0 * qc[None, :] + sign * tq) / p**2)
        idx[start : start + len(t)], val[start : start + len(t)] = top_contributions(contrib, k)
    return idx, val
