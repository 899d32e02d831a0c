"""Routing strategies on small hand-built cases whose right answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hybridpref.router.budget import Budget, resolve_budget
from hybridpref.router.scoring import QuadraticScorer, mix_counts
from hybridpref.router.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    GreedyOptions,
    marginal_gains,
    route,
    strategy_spec,
)
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import DeadlineExceeded, InvalidInput, NotReady

ALL = sorted(STRATEGIES)
FINITE = [s for s in ALL if s not in ("all_human", "all_lm")]


def one_hot(n: int, v: int, rows_by_tag: dict[int, list[int]]) -> np.ndarray:
    tags = np.zeros((n, v), dtype=np.uint8)
    for tag, rows in rows_by_tag.items():
        tags[rows, tag] = 1
    return tags


def count_budget(n: int, k: int):
    return resolve_budget(Budget.count(k), n, None)


def judge_signals(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, 0.9), np.zeros(n, dtype=bool)


def run(strategy: str, tags: np.ndarray, budget, scorer, seed: int = 0, **kw):
    if STRATEGIES[strategy].needs_judge_first and "judge_confidence" not in kw:
        kw["judge_confidence"], kw["judge_inconsistent"] = judge_signals(len(tags))
    if STRATEGIES[strategy].needs_expected_gain and "expected_gain" not in kw:
        kw["expected_gain"] = np.random.default_rng(len(tags)).random(len(tags)) * 0.5
    return route(strategy, tags, budget, scorer=scorer, seed=seed, **kw)


# ----------------------------------------------------------- one tag worth everything

ONE_TAG_ROWS = [2, 5, 7]


@pytest.fixture
def one_tag_case() -> tuple[np.ndarray, QuadraticScorer]:
    rng = np.random.default_rng(3)
    tags = (rng.random((12, 4)) < 0.4).astype(np.uint8)
    tags[:, 0] = 0
    tags[ONE_TAG_ROWS, 0] = 1
    return tags, QuadraticScorer(0.5, np.array([1.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("strategy", ["topk", "greedy", "optimal_pos", "simulated", "judge_aware"])
def test_one_tag_worth_everything(strategy: str, one_tag_case) -> None:
    tags, scorer = one_tag_case
    result = run(strategy, tags, count_budget(12, 3), scorer)
    assert sorted(np.flatnonzero(result.human_mask)) == ONE_TAG_ROWS
    assert result.predicted_score == pytest.approx(0.5 + 3 / 12)


def test_optimal_pos_with_auto_routes_exactly_the_positive_gains(one_tag_case) -> None:
    tags, scorer = one_tag_case
    result = run("optimal_pos", tags, resolve_budget(Budget.auto(), 12, None), scorer)
    assert sorted(np.flatnonzero(result.human_mask)) == ONE_TAG_ROWS
    assert (result.gains[ONE_TAG_ROWS] > 0).all() and (np.delete(result.gains, ONE_TAG_ROWS) == 0).all()


def test_optimal_pos_under_a_larger_count_does_not_pad_with_useless_instances(one_tag_case) -> None:
    tags, scorer = one_tag_case
    assert run("optimal_pos", tags, count_budget(12, 6), scorer).human_count == 3


# ----------------------------------------------------------- a harmful tag


def test_greedy_and_topk_avoid_a_negative_tag() -> None:
    # 10 instances: 0-3 carry the harmful tag 1 (and the good tag 0), 4-9 only tag 0
    tags = one_hot(10, 3, {0: list(range(10)), 1: [0, 1, 2, 3]})
    scorer = QuadraticScorer(0.0, np.array([0.5, -1.0, 0.0]))
    for strategy in ("greedy", "topk"):
        result = run(strategy, tags, count_budget(10, 6), scorer)
        assert sorted(np.flatnonzero(result.human_mask)) == [4, 5, 6, 7, 8, 9], strategy
    auto = run("greedy", tags, resolve_budget(Budget.auto(), 10, None), scorer)
    assert sorted(np.flatnonzero(auto.human_mask)) == [4, 5, 6, 7, 8, 9]
    # forced to route 8, greedy must take the least harmful extra ones, still a valid count
    forced = run("greedy", tags, count_budget(10, 8), scorer)
    assert forced.human_count == 8 and forced.human_mask[4:].all()


# ----------------------------------------------------------- interactions: greedy beats topk


@pytest.fixture
def diminishing_case() -> tuple[np.ndarray, QuadraticScorer]:
    # f(x) = x0 + 0.5 x1 - 4 x0^2: tag 0 is the best alone but saturates fast.
    tags = one_hot(20, 2, {0: list(range(10)), 1: list(range(10, 20))})
    quad = np.array([[-4.0, 0.0], [0.0, 0.0]])
    return tags, QuadraticScorer(0.0, np.array([1.0, 0.5]), quad)


def test_greedy_beats_topk_when_gains_interact(diminishing_case) -> None:
    tags, scorer = diminishing_case
    budget = count_budget(20, 6)
    topk = run("topk", tags, budget, scorer)
    greedy = run("greedy", tags, budget, scorer)
    assert topk.human_mask[:10].sum() == 6  # topk ignores saturation
    assert greedy.human_mask[:10].sum() == 1 and greedy.human_mask[10:].sum() == 5
    assert greedy.predicted_score == pytest.approx(0.165)
    assert topk.predicted_score == pytest.approx(-0.06)
    # brute force over how many tag-0 instances to take: greedy is optimal here
    best = max(scorer.score(np.array([[c0, 6 - c0]]), 20)[0] for c0 in range(7))
    assert greedy.predicted_score == pytest.approx(best)


def test_greedy_auto_stops_where_the_next_label_stops_helping(diminishing_case) -> None:
    tags, scorer = diminishing_case
    result = run("greedy", tags, resolve_budget(Budget.auto(), 20, None), scorer)
    # tag 0: 0.05 - 0.01 (2 c0 + 1) > 0 for c0 = 0, 1 -> 2 of them (third would add 0.0); all of tag 1
    assert result.human_mask[:10].sum() == 2 and result.human_mask[10:].all()
    assert result.gains[result.human_mask].min() > 0
    assert result.gains[~result.human_mask].max() <= 1e-12


def test_rounded_greedy_stays_close_to_exact_greedy() -> None:
    rng = np.random.default_rng(5)
    tags = (rng.random((3000, 30)) < 0.15).astype(np.uint8)
    scorer = QuadraticScorer.random(30, seed=9, quad_scale=10.0)
    budget = count_budget(3000, 750)
    exact = run("greedy", tags, budget, scorer, greedy=GreedyOptions(exact_work=10**12))
    rounded = run("greedy", tags, budget, scorer, greedy=GreedyOptions(min_rounds=8, exact_work=0))
    topk = run("topk", tags, budget, scorer)
    gap_topk = exact.predicted_score - topk.predicted_score
    assert gap_topk > 0
    assert exact.predicted_score - rounded.predicted_score < 0.1 * gap_topk


# ----------------------------------------------------------- budgets at the edges


@pytest.mark.parametrize("strategy", FINITE)
@pytest.mark.parametrize("k", [0, 1, 12])
def test_count_budget_edges(strategy: str, k: int, one_tag_case) -> None:
    tags, scorer = one_tag_case
    result = run(strategy, tags, count_budget(12, k), scorer)
    expected = min(k, 3) if strategy == "optimal_pos" else k
    assert result.human_count == expected
    assert result.human_mask.dtype == bool and result.gains.shape == (12,)


@pytest.mark.parametrize("strategy", FINITE)
def test_cost_budget_too_small_for_any_instance_routes_nothing(strategy: str, one_tag_case) -> None:
    tags, scorer = one_tag_case
    budget = resolve_budget(Budget.cost(0.9), 12, np.full(12, 1.0))
    assert run(strategy, tags, budget, scorer).human_count == 0


@pytest.mark.parametrize("strategy", FINITE)
def test_cost_budget_is_never_exceeded(strategy: str) -> None:
    rng = np.random.default_rng(2)
    tags = (rng.random((200, 10)) < 0.3).astype(np.uint8)
    scorer = QuadraticScorer.random(10, seed=1)
    costs = rng.uniform(0.2, 3.0, 200)
    budget = resolve_budget(Budget.cost(40.0), 200, costs)
    result = run(strategy, tags, budget, scorer)
    assert budget.allows(result.human_mask)
    assert budget.spent(result.human_mask) > 40.0 - 3.0 or strategy == "optimal_pos"  # filled up to the last item


def test_cost_aware_topk_prefers_cheap_instances_per_unit_gain() -> None:
    tags = one_hot(4, 1, {0: [0, 1, 2, 3]})
    scorer = QuadraticScorer(0.0, np.array([1.0]))  # all gains equal
    budget = resolve_budget(Budget.cost(2.0), 4, np.array([2.0, 0.5, 2.0, 0.5]))
    for strategy in ("topk", "greedy"):
        assert sorted(np.flatnonzero(run(strategy, tags, budget, scorer).human_mask)) == [1, 3]


def test_baselines_ignore_the_budget(one_tag_case) -> None:
    tags, scorer = one_tag_case
    assert run("all_human", tags, count_budget(12, 2), scorer).human_mask.all()
    assert not run("all_lm", tags, count_budget(12, 2), scorer).human_mask.any()
    assert run("all_human", tags, count_budget(12, 2), None).predicted_score is None


# ----------------------------------------------------------- judge-aware


def test_judge_aware_without_a_predictor_routes_the_judges_doubts() -> None:
    n = 8
    tags = np.zeros((n, 3), dtype=np.uint8)
    confidence = np.array([0.95, 0.9, 0.4, 0.99, 0.85, 0.97, 0.92, 0.9])
    inconsistent = np.array([False, False, False, False, False, False, True, False])
    result = route(
        "judge_aware", tags, count_budget(n, 2), scorer=None, seed=0, judge_confidence=confidence, judge_inconsistent=inconsistent
    )
    assert sorted(np.flatnonzero(result.human_mask)) == [2, 6]
    assert result.predicted_score is None
    auto = route(
        "judge_aware",
        tags,
        resolve_budget(Budget.auto(), n, None),
        scorer=None,
        seed=0,
        judge_confidence=confidence,
        judge_inconsistent=inconsistent,
    )
    assert sorted(np.flatnonzero(auto.human_mask)) == [2, 6]


def test_judge_aware_blends_the_predictor_gain() -> None:
    # both rows 0 and 1 carry the good tag; row 1's judge flipped -> row 1 wins the single slot
    tags = one_hot(4, 2, {0: [0, 1], 1: [2, 3]})
    scorer = QuadraticScorer(0.0, np.array([1.0, -1.0]))
    confidence = np.array([0.9, 0.9, 0.9, 0.9])
    inconsistent = np.array([False, True, False, True])
    result = run("judge_aware", tags, count_budget(4, 1), scorer, judge_confidence=confidence, judge_inconsistent=inconsistent)
    assert np.flatnonzero(result.human_mask).tolist() == [1]
    # auto: the doubtful row 3 has a negative PPM gain and stays with the LM
    auto = run(
        "judge_aware",
        tags,
        resolve_budget(Budget.auto(), 4, None),
        scorer,
        judge_confidence=confidence,
        judge_inconsistent=inconsistent,
    )
    assert np.flatnonzero(auto.human_mask).tolist() == [1]


# ----------------------------------------------------------- determinism and errors


@pytest.mark.parametrize("strategy", ["random", "simulated"])
def test_same_seed_same_decisions_other_seed_other_decisions(strategy: str) -> None:
    rng = np.random.default_rng(0)
    tags = (rng.random((300, 12)) < 0.2).astype(np.uint8)
    scorer = QuadraticScorer.random(12, seed=2)
    budget = count_budget(300, 75)
    a = run(strategy, tags, budget, scorer, seed=42, simulated_candidates=20)
    b = run(strategy, tags, budget, scorer, seed=42, simulated_candidates=20)
    c = run(strategy, tags, budget, scorer, seed=43, simulated_candidates=20)
    np.testing.assert_array_equal(a.human_mask, b.human_mask)
    np.testing.assert_array_equal(a.gains, b.gains)
    assert not np.array_equal(a.human_mask, c.human_mask)


def test_simulated_beats_random_and_more_candidates_never_hurt() -> None:
    rng = np.random.default_rng(1)
    tags = (rng.random((400, 12)) < 0.2).astype(np.uint8)
    scorer = QuadraticScorer.random(12, seed=3)
    budget = count_budget(400, 100)
    few = run("simulated", tags, budget, scorer, seed=5, simulated_candidates=5)
    many = run("simulated", tags, budget, scorer, seed=5, simulated_candidates=200)
    rand = run("random", tags, budget, scorer, seed=5)
    assert many.predicted_score >= few.predicted_score > rand.predicted_score - 1e-9
    uniform = run("simulated", tags, budget, scorer, seed=5, simulated_candidates=50, simulated_sampler="uniform")
    assert uniform.human_count == 100


def test_errors_name_what_to_fix(one_tag_case) -> None:
    tags, scorer = one_tag_case
    budget = count_budget(12, 3)
    with pytest.raises(InvalidInput) as exc:
        route("best", tags, budget, scorer=scorer, seed=0)
    assert exc.value.violations[0].field == "config.strategy" and "greedy" in str(exc.value)
    for strategy in ("topk", "simulated", "optimal_pos", "greedy"):
        assert STRATEGIES[strategy].needs_predictor
        with pytest.raises(NotReady):
            route(strategy, tags, budget, scorer=None, seed=0)
    assert STRATEGIES["judge_aware"].needs_judge_first and not STRATEGIES["greedy"].needs_judge_first
    with pytest.raises(NotReady):
        route("judge_aware", tags, budget, scorer=scorer, seed=0)
    for strategy in ("random", "simulated"):
        with pytest.raises(InvalidInput) as exc:
            route(strategy, tags, resolve_budget(Budget.auto(), 12, None), scorer=scorer, seed=0)
        assert exc.value.violations[0].field == "config.budget.auto"
    with pytest.raises(InvalidInput):
        route("topk", tags[:5], budget, scorer=scorer, seed=0)
    with pytest.raises(InvalidInput):
        route("topk", tags * 2, budget, scorer=scorer, seed=0)
    with pytest.raises(InvalidInput) as exc:
        route("topk", np.ones((12, 5), dtype=np.uint8), budget, scorer=scorer, seed=0)
    assert exc.value.violations[0].field == "tag_matrix"


def test_the_default_routes_by_expected_gain_and_is_resolved_by_the_caller(one_tag_case) -> None:
    tags, scorer = one_tag_case
    gain = np.linspace(0, 0.5, 12)
    result = route(DEFAULT_STRATEGY, tags, count_budget(12, 3), scorer=scorer, seed=0, expected_gain=gain)
    assert result.strategy == DEFAULT_STRATEGY == "hybrid"
    assert sorted(np.flatnonzero(result.human_mask)) == [9, 10, 11]
    with pytest.raises(InvalidInput) as exc:  # "" is no strategy: the servicer applies the default, once
        route("", tags, count_budget(12, 3), scorer=scorer, seed=0, expected_gain=gain)
    assert exc.value.violations[0].field == "config.strategy"


def test_the_registry_says_what_each_strategy_needs(one_tag_case) -> None:
    """Every flag of a spec is what the strategy really needs: without it, it refuses (NotReady); with
    only it, it runs."""
    tags, scorer = one_tag_case
    n, budget = len(tags), count_budget(len(tags), 3)
    full = {"scorer": scorer, "expected_gain": np.linspace(0, 0.5, n), "judge_confidence": np.full(n, 0.9)}
    for name, spec in STRATEGIES.items():
        assert strategy_spec(name) is spec and spec.fn.__name__ in (name, "random_subset")
        needed = {
            "scorer": spec.needs_predictor,
            "expected_gain": spec.needs_expected_gain,
            "judge_confidence": spec.needs_judge_first and not spec.needs_expected_gain,
        }
        only = {k: (v if needed[k] else None) for k, v in full.items()}
        assert route(name, tags, budget, seed=0, **only).strategy == name
        for k in (k for k, need in needed.items() if need):
            with pytest.raises(NotReady):
                route(name, tags, budget, seed=0, **{**only, k: None})
    assert [s for s, spec in STRATEGIES.items() if not spec.needs_judge] == ["all_human"]
    assert {s for s, spec in STRATEGIES.items() if spec.predictor == "optional"} == {"judge_aware"}


# ----------------------------------------------------------- summary helpers


def test_marginal_gains_are_score_differences() -> None:
    rng = np.random.default_rng(4)
    tags = (rng.random((15, 5)) < 0.4).astype(np.uint8)
    scorer = QuadraticScorer.random(5, seed=8, quad_scale=30.0)
    mask = rng.random(15) < 0.5
    gains = marginal_gains(scorer, tags, mask)
    base = scorer.score(mix_counts(tags, mask)[None, :], 15)[0]
    for i in range(15):
        other = mask.copy()
        other[i] = not other[i]
        moved = scorer.score(mix_counts(tags, other)[None, :], 15)[0]
        expected = base - moved if mask[i] else moved - base
        assert gains[i] == pytest.approx(expected, abs=1e-9)


def test_summary_random_baseline_is_the_exact_mean_over_subsets() -> None:
    from hybridpref.router.summary import ppm_values

    rng = np.random.default_rng(6)
    tags = (rng.random((8, 4)) < 0.5).astype(np.uint8)
    scorer = QuadraticScorer.random(4, seed=2, quad_scale=50.0)
    mask = np.zeros(8, dtype=bool)
    mask[[0, 3, 5]] = True
    out = ppm_values(scorer, tags, mask, mix_counts(tags, np.ones(8, dtype=bool)))
    subsets = [list(s) for s in itertools.combinations(range(8), 3)]
    counts = np.array([tags[s].sum(axis=0) for s in subsets], dtype=float)
    assert out["random"] == pytest.approx(scorer.score(counts, 8).mean(), abs=1e-9)
    assert out["all_human"] == pytest.approx(scorer.score(tags.sum(axis=0, dtype=float)[None, :], 8)[0])
    assert out["chosen"] == pytest.approx(scorer.score(mix_counts(tags, mask)[None, :], 8)[0])


def test_explanations_add_up_to_the_marginal_gain_and_name_the_decisive_tag() -> None:
    from hybridpref.router.explain import top_tags

    rng = np.random.default_rng(7)
    tags = (rng.random((30, 6)) < 0.4).astype(np.uint8)
    scorer = QuadraticScorer.random(6, seed=3, quad_scale=40.0)
    mask = rng.random(30) < 0.4
    idx, val = top_tags(scorer, tags, mask, 6)
    np.testing.assert_allclose(val.sum(axis=1), marginal_gains(scorer, tags, mask), rtol=1e-4, atol=1e-6)
    assert ((idx >= 0) == (val != 0)).all()
    assert (np.abs(val[:, :-1]) >= np.abs(val[:, 1:]) - 1e-7).all()  # largest first
    # one tag worth everything: it is the explanation
    one = one_hot(4, 3, {0: [0, 1], 2: [0, 2]})
    idx1, val1 = top_tags(QuadraticScorer(0.0, np.array([1.0, 0.0, 0.0])), one, np.zeros(4, dtype=bool), 2)
    assert idx1[0].tolist() == [0, -1] and idx1[2].tolist() == [-1, -1] and val1[0, 0] == pytest.approx(0.25)


@pytest.mark.parametrize("strategy", ["greedy", "simulated"])
def test_deadline_stops_long_strategies(strategy: str) -> None:
    rng = np.random.default_rng(0)
    tags = (rng.random((500, 10)) < 0.3).astype(np.uint8)
    scorer = QuadraticScorer.random(10, seed=1)
    with pytest.raises(DeadlineExceeded):
        run(strategy, tags, count_budget(500, 100), scorer, deadline=Deadline(0.0))


@pytest.mark.parametrize("strategy", ALL)
def test_every_strategy_is_deterministic(strategy: str) -> None:
    rng = np.random.default_rng(9)
    tags = (rng.random((400, 12)) < 0.25).astype(np.uint8)
    scorer = QuadraticScorer.random(12, seed=4, quad_scale=5.0)
    budget = resolve_budget(Budget.cost(80.0), 400, rng.uniform(0.5, 2.0, 400))
    first = run(strategy, tags, budget, scorer, seed=11, simulated_candidates=30)
    again = run(strategy, tags.copy(), budget, scorer, seed=11, simulated_candidates=30)
    np.testing.assert_array_equal(first.human_mask, again.human_mask)
    np.testing.assert_array_equal(first.gains, again.gains)


@pytest.mark.parametrize("kind,value", [("cost", 25.0), ("auto", True)])
def test_greedy_respects_cost_and_auto(kind: str, value: object) -> None:
    rng = np.random.default_rng(12)
    tags = (rng.random((120, 8)) < 0.3).astype(np.uint8)
    quad = QuadraticScorer.random(8, seed=6, quad_scale=20.0)
    budget = resolve_budget(Budget(kind, value), 120, rng.uniform(0.5, 1.5, 120))
    result = run("greedy", tags, budget, quad)
    assert budget.allows(result.human_mask) and result.human_mask.any()
    if kind == "auto":  # stops where nothing left helps
        assert result.gains[~result.human_mask].max() <= 1e-12


# ----------------------------------------------------------- expected gain, judge doubt, hybrid


def _signals(label, flip=None, agreement=None, p_a=None):
    from hybridpref.common.signals import JudgeSignals

    n = len(label)
    return JudgeSignals(
        np.asarray(label, dtype=np.int8),
        np.full(n, np.nan) if p_a is None else np.asarray(p_a, dtype=float),
        np.zeros(n, dtype=bool) if flip is None else np.asarray(flip, dtype=bool),
        np.full(n, np.nan) if agreement is None else np.asarray(agreement, dtype=float),
    )


def test_expected_gain_routes_the_largest_gain_per_unit_cost() -> None:
    tags = np.zeros((6, 3), dtype=np.uint8)
    gain = np.array([0.05, 0.6, 0.3, -0.1, 0.3, 0.02])
    result = route("expected_gain", tags, count_budget(6, 2), scorer=None, seed=0, expected_gain=gain)
    assert sorted(np.flatnonzero(result.human_mask)) in ([1, 2], [1, 4])
    assert np.array_equal(result.gains, gain)
    # cost budget: instance 1 costs 10x, so two cheap 0.3s beat it per unit cost
    costs = np.array([1, 10, 1, 1, 1, 1.0])
    cost_budget = resolve_budget(Budget.cost(2.0), 6, costs)
    result = route("expected_gain", tags, cost_budget, scorer=None, seed=0, expected_gain=gain)
    assert sorted(np.flatnonzero(result.human_mask)) == [2, 4]
    auto = route("expected_gain", tags, resolve_budget(Budget.auto(), 6, None), scorer=None, seed=0, expected_gain=gain)
    assert sorted(np.flatnonzero(auto.human_mask)) == [1, 2, 4]  # gain > 0.1 per unit cost
    with pytest.raises(NotReady):
        route("expected_gain", tags, count_budget(6, 2), scorer=None, seed=0)
    with pytest.raises(InvalidInput):
        route("expected_gain", tags, count_budget(6, 2), scorer=None, seed=0, expected_gain=gain[:3])


def test_expected_gain_ties_are_seeded_not_positional() -> None:
    tags = np.zeros((200, 2), dtype=np.uint8)
    gain = np.full(200, 0.2)
    picks = [
        np.flatnonzero(route("expected_gain", tags, count_budget(200, 20), scorer=None, seed=s, expected_gain=gain).human_mask)
        for s in (0, 0, 1)
    ]
    assert np.array_equal(picks[0], picks[1]) and not np.array_equal(picks[0], picks[2])
    assert picks[0].max() > 100  # not the first 20 rows


def test_judge_doubt_orders_no_verdict_then_disagreement_then_confidence() -> None:
    tags = np.zeros((5, 2), dtype=np.uint8)
    sig = _signals([1, 0, -1, 1, 1], flip=[0, 0, 0, 1, 0], agreement=[1.0, 1.0, 0.2, 1.0, 0.6], p_a=[0.9, np.nan, 0.1, 0.6, 0.8])
    result = route("judge_doubt", tags, count_budget(5, 3), scorer=None, seed=0, signals=sig)
    assert sorted(np.flatnonzero(result.human_mask)) == [1, 2, 3]  # no verdict, flip, then agreement 0.2
    assert result.gains[1] == 1.0 and result.gains[3] == 1.0 and result.gains[4] == pytest.approx(0.9 * 0.4)
    one = route(
        "judge_doubt",
        tags,
        count_budget(5, 1),
        scorer=None,
        seed=0,
        signals=_signals([1, 1, 1, 1, 1], p_a=[0.9, 0.5, 0.99, 0.8, 0.7]),
    )
    assert np.flatnonzero(one.human_mask).tolist() == [1]


def test_judge_aware_uses_real_signals_not_topk() -> None:
    """One verdict per pair used to give confidence 1 everywhere, so judge_aware = topk; with the
    signals a no-verdict instance goes first even when its PPM gain is the lowest."""
    tags = one_hot(4, 2, {0: [0, 1, 2]})
    scorer = QuadraticScorer(0.5, np.array([1.0, 0.0]))
    sig = _signals([1, 1, 1, 0])
    result = route("judge_aware", tags, count_budget(4, 1), scorer=scorer, seed=0, signals=sig, judge_aware=None)
    topk = route("topk", tags, count_budget(4, 1), scorer=scorer, seed=0)
    assert np.flatnonzero(result.human_mask).tolist() == [3]
    assert not np.array_equal(result.human_mask, topk.human_mask)


def test_hybrid_uses_the_ppm_only_as_an_in_domain_tie_breaker() -> None:
    tags = one_hot(6, 2, {0: [4, 5]})
    scorer = QuadraticScorer(0.5, np.array([1.0, 0.0]))
    gain = np.array([0.5, 0.2, 0.2, 0.2, 0.2, 0.2])
    in_domain = route("hybrid", tags, count_budget(6, 2), scorer=scorer, seed=0, expected_gain=gain, ppm_in_domain=True)
    assert sorted(np.flatnonzero(in_domain.human_mask)) in ([0, 4], [0, 5])  # the tie among 0.2s goes to the PPM's tag
    assert in_domain.info["ppm_tie_breaker"] == 1.0
    for seed in range(5):
        out = route("hybrid", tags, count_budget(6, 2), scorer=scorer, seed=seed, expected_gain=gain, ppm_in_domain=False)
        eg = route("expected_gain", tags, count_budget(6, 2), scorer=None, seed=seed, expected_gain=gain)
        assert np.array_equal(out.human_mask, eg.human_mask) and out.info["ppm_tie_breaker"] == 0.0
    big = np.where(np.arange(6) == 1, 0.9, gain)  # a distinct expected gain always beats the PPM
    assert 1 in np.flatnonzero(
        route("hybrid", tags, count_budget(6, 1), scorer=scorer, seed=0, expected_gain=big, ppm_in_domain=True).human_mask
    )
    spec = STRATEGIES[DEFAULT_STRATEGY]
    assert DEFAULT_STRATEGY == "hybrid" and spec.needs_judge_first and not spec.needs_predictor and spec.predictor == "in_domain"


def test_correction_intervals_widen_by_the_measured_transfer_range() -> None:
    from hybridpref.router.summary import Estimate, MixPrediction, Summary, _corrections, widen

    assert widen(Estimate(10.0, 8.0, 12.0), None) == Estimate(10.0, 8.0, 12.0)
    assert widen(Estimate(10.0, 8.0, 12.0), (0.5, 2.0)) == Estimate(10.0, 4.0, 24.0)
    assert widen(Estimate(-1.0, -3.0, 1.0), (0.5, 2.0)) == Estimate(-1.0, -6.0, 2.0)  # a negative end widens outward
    p_lm, p_h = np.array([0.9, 0.8, 0.1, 0.2]), np.array([0.1, 0.1, 0.1, 0.1])
    mask = np.array([True, True, False, False])
    plain, wide = (Summary(mixes=[MixPrediction("chosen", 2), MixPrediction("random", 2)]) for _ in range(2))
    _corrections(plain, (p_lm, p_h), mask, 1.645)
    _corrections(wide, (p_lm, p_h), mask, 1.645, (0.4, 1.9))
    for a, b in zip(plain.mixes, wide.mixes):
        assert a.corrections.value == b.corrections.value
        ends = [e * r for e in (a.corrections.low, a.corrections.high) for r in (0.4, 1.9)]
        assert b.corrections.low == pytest.approx(min(ends)) and b.corrections.high == pytest.approx(max(ends))
        assert b.corrections.low <= a.corrections.low and b.corrections.high >= a.corrections.high


def test_expected_corrections_interval_is_not_negative_unless_the_expectation_is() -> None:
    # Issue 18 item 13: "expected corrections, random" showed a negative lower bound.
    from hybridpref.router.summary import Estimate, MixPrediction, Summary, _corrections, shown_corrections

    p_lm, p_h = np.full(40, 0.15), np.full(40, 0.1)  # a good judge: each human label gains little
    mask = np.zeros(40, dtype=bool)
    mask[:3] = True
    out = Summary(mixes=[MixPrediction(name, 3) for name in ("chosen", "all_human", "all_lm", "random")])
    _corrections(out, (p_lm, p_h), mask, 1.645, (0.35, 1.9))
    for mix in out.mixes:
        c = mix.corrections
        assert 0.0 <= c.low <= c.value <= c.high, (mix.mix, c)
    random = {m.mix: m for m in out.mixes}["random"].corrections
    assert random.low == 0.0 and random.value > 0  # the plain normal interval went below 0 here
    # a negative expectation (humans worse than the judge) keeps its negative interval
    assert shown_corrections(Estimate(-1.0, -3.0, 1.0), (0.5, 2.0)) == Estimate(-1.0, -6.0, 2.0)
