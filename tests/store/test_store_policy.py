"""The campaign spending policy (hybridpref.store.policy) as a pure function, on seeded synthetic streams."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.store.policy import EPS, batch_seed, plan_batch, update_sample


def run_stream(scores_by_batch, costs_by_batch, *, kind, total, expected, share=0.0, sample=False):
    """Feed batches through plan_batch as the store does (``sample``: keep the history as the store's
    reservoir sample, else every score); returns (spend per batch, plans)."""
    history = np.zeros(0)
    spent, seen, spends, plans = 0.0, 0, [], []
    for b, (scores, costs) in enumerate(zip(scores_by_batch, costs_by_batch, strict=True)):
        plan = plan_batch(
            scores,
            costs,
            history=history,
            budget_kind=kind,
            budget_left=total - spent,
            seen=seen,
            expected_instances=expected,
            exploration_share=share,
            seed=batch_seed(7, f"b{b}"),
        )
        units = np.ones(len(scores)) if kind == "count" else costs
        assert plan.spend == pytest.approx(float(units[plan.human].sum()))
        assert not np.any(plan.exploration & ~plan.human)
        spent += plan.spend
        assert spent <= total + EPS, "the policy spent more than the campaign's total"
        spends.append(plan.spend)
        plans.append(plan)
        history = update_sample(history, seen, scores, batch_seed(7, f"b{b}")) if sample else np.concatenate([history, scores])
        seen += len(scores)
    return np.array(spends), plans


def stream(seed, batches=20, size=(200, 800)):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(size[0], size[1], batches)
    scores = [rng.beta(2, 5, n) for n in sizes]
    costs = [rng.uniform(0.5, 3.0, n) for n in sizes]
    return scores, costs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_budget_lands_within_2_percent_and_tracks_the_stream(seed):
    scores, costs = stream(seed)
    n = sum(len(s) for s in scores)
    total = float(int(0.25 * n))
    spends, _ = run_stream(scores, costs, kind="count", total=total, expected=n)
    assert total * 0.98 <= spends.sum() <= total
    # spending follows the stream: after half of the instances, about half of the budget is spent
    sizes = np.array([len(s) for s in scores])
    half = np.searchsorted(np.cumsum(sizes), n / 2)
    assert spends[: half + 1].sum() / total == pytest.approx(np.cumsum(sizes)[half] / n, abs=0.08)


@pytest.mark.parametrize("seed", [0, 1])
def test_cost_budget_never_exceeds_and_lands_within_2_percent(seed):
    scores, costs = stream(seed)
    total = 0.25 * sum(c.sum() for c in costs)
    spends, _ = run_stream(scores, costs, kind="cost", total=total, expected=sum(len(s) for s in scores))
    assert total * 0.98 <= spends.sum() <= total + EPS


def test_underestimated_stream_never_overspends():
    """The vendor said 2,000 instances and sends 6,000: the budget runs out early but never over."""
    scores, costs = stream(3, batches=20, size=(300, 301))
    spends, _ = run_stream(scores, costs, kind="count", total=500, expected=2000)
    assert spends.sum() == 500
    assert spends[-10:].sum() == 0  # spent within the announced stream and the batch after it


def test_without_expected_instances_each_batch_is_the_rest():
    scores, costs = stream(4, batches=5, size=(100, 101))
    spends, plans = run_stream(scores, costs, kind="count", total=150, expected=None)
    assert spends.tolist() == [100, 50, 0, 0, 0]
    assert all(p.final for p in plans)
    # the best scores of the batch were chosen
    second = plans[1]
    assert scores[1][second.human].min() >= scores[1][~second.human].max()


def test_higher_scores_get_humans():
    scores, costs = stream(5)
    _, plans = run_stream(scores, costs, kind="count", total=2000, expected=sum(len(s) for s in scores))
    routed = np.concatenate([s[p.human] for s, p in zip(scores, plans, strict=True)])
    kept = np.concatenate([s[~p.human] for s, p in zip(scores, plans, strict=True)])
    assert routed.mean() > kept.mean() + 0.2
    # a batch richer in high scores than the history gets a larger share of humans
    rich = np.concatenate([scores[0], scores[1]]) + 0.3
    history = np.concatenate(scores[:10])
    args = dict(
        budget_kind="count",
        budget_left=1000,
        seen=len(history),
        expected_instances=len(history) * 2,
        exploration_share=0.0,
        seed=1,
    )
    plain = plan_batch(scores[11], np.ones(len(scores[11])), history=history, **args)
    richer = plan_batch(rich, np.ones(len(rich)), history=history, **args)
    assert richer.human.mean() > 2 * plain.human.mean()


def test_exploration_share_is_random_and_deterministic():
    scores, costs = stream(6)
    n = sum(len(s) for s in scores)
    spends, plans = run_stream(scores, costs, kind="count", total=0.25 * n // 1, expected=n, share=0.2)
    explored = sum(int(p.exploration.sum()) for p in plans)
    assert explored / spends.sum() == pytest.approx(0.2, abs=0.03)
    explored_scores = np.concatenate([s[p.exploration] for s, p in zip(scores, plans, strict=True)])
    exploited_scores = np.concatenate([s[p.human & ~p.exploration] for s, p in zip(scores, plans, strict=True)])
    assert explored_scores.mean() < exploited_scores.mean() - 0.1  # drawn from the whole batch, not the top
    again, plans2 = run_stream(scores, costs, kind="count", total=0.25 * n // 1, expected=n, share=0.2)
    assert all(
        np.array_equal(a.human, b.human) and np.array_equal(a.exploration, b.exploration)
        for a, b in zip(plans, plans2, strict=True)
    )
    assert batch_seed(1, "b") != batch_seed(2, "b") and batch_seed(1, "b") != batch_seed(1, "c")


def test_tied_scores_are_shared_at_the_threshold():
    """Every score equal (e.g. a judge that gave no verdict anywhere): the fraction still holds."""
    scores = [np.full(400, 0.5) for _ in range(10)]
    costs = [np.ones(400) for _ in range(10)]
    spends, _ = run_stream(scores, costs, kind="count", total=1000, expected=4000)
    assert spends.sum() == 1000
    assert spends[:9].max() - spends[:9].min() < 40  # paced evenly, not all at once


def test_empty_and_exhausted():
    none = plan_batch(
        np.zeros(0),
        np.zeros(0),
        history=np.zeros(0),
        budget_kind="count",
        budget_left=5,
        seen=0,
        expected_instances=10,
        exploration_share=0.0,
        seed=0,
    )
    assert none.spend == 0 and len(none.human) == 0
    broke = plan_batch(
        np.ones(5),
        np.full(5, 2.0),
        history=np.zeros(0),
        budget_kind="cost",
        budget_left=1.5,
        seen=0,
        expected_instances=None,
        exploration_share=0.0,
        seed=0,
    )
    assert broke.spend == 0 and not broke.human.any()
    # a cheaper instance still fits where the best one does not
    mixed = plan_batch(
        np.array([0.9, 0.5]),
        np.array([3.0, 1.0]),
        history=np.zeros(0),
        budget_kind="cost",
        budget_left=2.0,
        seen=0,
        expected_instances=None,
        exploration_share=0.0,
        seed=0,
    )
    assert mixed.human.tolist() == [False, True] and mixed.spend == 1.0


def test_score_sample_is_exact_when_small_and_uniform_when_large():
    rng = np.random.default_rng(8)
    batches = [rng.normal(loc=b / 10, size=500) for b in range(60)]  # a drifting stream of 30,000 scores
    sample, seen = np.zeros(0), 0
    for b, scores in enumerate(batches):
        sample = update_sample(sample, seen, scores, seed=b, size=8192)
        seen += len(scores)
        if seen <= 8192:
            assert np.array_equal(sample, np.concatenate(batches[: b + 1]))
    everything = np.concatenate(batches)
    assert len(sample) == 8192
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # the sample's quantiles are the stream's, drift included
        share_below = np.mean(everything <= np.quantile(sample, q))
        assert share_below == pytest.approx(q, abs=0.015)
    last = update_sample(sample, seen, batches[0], seed=99, size=8192)
    assert np.array_equal(last, update_sample(sample, seen, batches[0], seed=99, size=8192))  # seeded
    assert not np.array_equal(last, update_sample(sample, seen, batches[0], seed=98, size=8192))


def test_long_stream_with_the_sample_lands_within_2_percent():
    scores, costs = stream(9, batches=100, size=(300, 700))
    n = sum(len(s) for s in scores)
    total = float(int(0.25 * n))
    spends, _ = run_stream(scores, costs, kind="count", total=total, expected=n, sample=True)
    assert total * 0.98 <= spends.sum() <= total
    sizes = np.array([len(s) for s in scores])
    half = np.searchsorted(np.cumsum(sizes), n / 2)
    assert spends[: half + 1].sum() / total == pytest.approx(np.cumsum(sizes)[half] / n, abs=0.05)


def test_sampled_history_weighs_for_the_whole_stream():
    """A sample of 8,192 scores standing for 1,000,000 earlier ones is not outweighed by a batch of 50,000."""
    rng = np.random.default_rng(10)
    history, batch = rng.normal(0, 1, 8192), rng.normal(1, 1, 50_000)
    plan = plan_batch(
        batch,
        np.ones(len(batch)),
        history=history,
        budget_kind="count",
        budget_left=300_000,
        seen=1_000_000,
        expected_instances=4_000_000,
        exploration_share=0.0,
        seed=3,
    )
    assert plan.fraction == pytest.approx(0.1)
    stream = np.concatenate([rng.normal(0, 1, 1_000_000), rng.normal(1, 1, 50_000)])
    assert plan.threshold == pytest.approx(np.quantile(stream, 1 - plan.fraction), abs=0.05)
    assert batch[plan.human].min() >= plan.threshold
