"""The strategies' per-instance ``score`` (StrategySpec.score), what a campaign's spending policy ranks by:
its top instances are the ones the strategy itself routes at the same count budget, a cost budget ranks by
score per unit of cost, and the strategies without a score cannot route a campaign."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.common.signals import JudgeSignals
from hybridpref.router.budget import Budget, ResolvedBudget, resolve_budget
from hybridpref.router.scoring import QuadraticScorer
from hybridpref.router.strategies import STRATEGIES, campaign_strategy_spec, route, scores
from hybridpref_client.core.errors import InvalidInput, NotReady

N, V = 40, 6
SCORED = sorted(name for name, spec in STRATEGIES.items() if spec.routes_campaigns)


def case(seed: int = 5):
    rng = np.random.default_rng(seed)
    tags = (rng.random((N, V)) < 0.35).astype(np.uint8)
    scorer = QuadraticScorer(0.4, rng.normal(0, 1, V), rng.normal(0, 0.2, (V, V)))
    label = rng.choice([-1, 0, 1], N, p=[0.45, 0.1, 0.45]).astype(np.int8)
    signals = JudgeSignals(label, rng.random(N), rng.random(N) < 0.15, np.full(N, np.nan))
    expected = rng.random(N) * 0.6  # distinct values: no ties for the count comparison
    return tags, scorer, signals, expected


def inputs(name: str, tags, scorer, signals, expected) -> dict:
    spec = STRATEGIES[name]
    kw: dict = {"scorer": scorer if spec.predictor != "none" else None, "seed": 3}
    if spec.needs_judge_first:
        kw["signals"] = signals
    if spec.needs_expected_gain:
        kw["expected_gain"] = expected
    return kw


def test_which_strategies_can_route_a_campaign() -> None:
    assert set(SCORED) == {"random", "judge_doubt", "topk", "greedy", "optimal_pos", "judge_aware", "expected_gain", "hybrid"}
    for name in ("all_human", "all_lm", "simulated", "no_such"):
        with pytest.raises(InvalidInput) as exc:
            campaign_strategy_spec(name)
        assert exc.value.violations[0].field == "strategy" and "hybrid" in exc.value.violations[0].description


@pytest.mark.parametrize("name", SCORED)
def test_the_top_scores_are_what_the_strategy_routes(name: str) -> None:
    tags, scorer, signals, expected = case()
    kw = inputs(name, tags, scorer, signals, expected)
    got = scores(name, tags, resolve_budget(Budget.auto(), N, None), **kw)
    assert got.shape == (N,) and np.isfinite(got).all()
    assert np.array_equal(got, scores(name, tags, resolve_budget(Budget.auto(), N, None), **kw)), (
        "seeded: same inputs, same scores"
    )
    if name in ("random", "greedy", "judge_doubt"):  # random draws; greedy re-ranks; doubt ties (label 0 / flips = 1)
        return
    k = 10
    routed = route(name, tags, resolve_budget(Budget.count(k), N, None), **kw).human_mask
    top = np.argsort(-got, kind="stable")[:k]
    assert set(top) == set(np.flatnonzero(routed)), name


def test_judge_doubt_scores_its_doubt_and_random_differs_by_seed() -> None:
    tags, scorer, signals, expected = case()
    doubt = scores("judge_doubt", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=0, signals=signals)
    no_verdict = (signals.label == 0) | signals.order_flip
    assert (doubt[no_verdict] == 1.0).all() and (doubt[~no_verdict] < 1.0).all()
    a = scores("random", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=1)
    b = scores("random", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=2)
    assert not np.array_equal(a, b) and ((a >= 0) & (a < 1)).all()


def test_a_cost_budget_ranks_by_score_per_unit_of_cost() -> None:
    tags, scorer, signals, expected = case()
    costs = np.linspace(0.5, 4.0, N)
    cost = ResolvedBudget("cost", None, float("inf"), costs)
    got = scores("expected_gain", tags, cost, scorer=None, seed=0, signals=signals, expected_gain=expected)
    assert np.allclose(got, expected / (costs / costs.mean()))
    # the same score per unit of cost is what the strategy's own cost selection orders by
    per_unit = route(
        "expected_gain",
        tags,
        resolve_budget(Budget.cost(6.0), N, costs),
        scorer=None,
        seed=0,
        signals=signals,
        expected_gain=expected,
    ).human_mask
    best = int(np.argmax(got))
    assert per_unit[best]


def test_missing_inputs_are_refused_before_scoring() -> None:
    tags, _, _, _ = case()
    with pytest.raises(NotReady):
        scores("topk", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=0)
    with pytest.raises(NotReady):
        scores("hybrid", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=0)
    with pytest.raises(NotReady):
        scores("judge_doubt", tags, resolve_budget(Budget.auto(), N, None), scorer=None, seed=0)
