"""Budget resolution: fractions, counts, costs, auto, and every way a caller can get it wrong."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.common.vocabulary import NUM_TAGS, tag_index
from hybridpref.router.budget import (
    EXPERTISE_MULTIPLIERS,
    Budget,
    expertise_levels_from_tags,
    human_cost_formula,
    resolve_budget,
)
from hybridpref_client.core.errors import InvalidInput


def field_of(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.violations[0].field


def test_fraction_floors_like_the_paper_without_float_surprises() -> None:
    assert resolve_budget(Budget.fraction(0.25), 10, None).count == 2
    assert resolve_budget(Budget.fraction(0.29), 100, None).count == 29  # 0.29 * 100 = 28.999999999999996
    assert resolve_budget(Budget.fraction(1.0), 7, None).count == 7
    assert resolve_budget(Budget.fraction(0.0), 7, None).count == 0


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True])
def test_bad_fractions_name_the_field(value: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        resolve_budget(Budget.fraction(value), 10, None)  # type: ignore[arg-type]
    assert field_of(exc) == "config.budget.fraction"


@pytest.mark.parametrize("value,expected", [(0, 0), (1, 1), (10, 10), (3.0, 3)])
def test_count_edges(value: float, expected: int) -> None:
    budget = resolve_budget(Budget.count(value), 10, None)
    assert (budget.kind, budget.count) == ("count", expected)


@pytest.mark.parametrize("value", [11, -1, 2.5])
def test_bad_counts(value: float) -> None:
    with pytest.raises(InvalidInput) as exc:
        resolve_budget(Budget.count(value), 10, None)
    assert field_of(exc) == "config.budget.count"
    assert "[0, 10]" in str(exc.value)


def test_cost_budget_keeps_supplied_costs_and_fills_missing_from_the_formula() -> None:
    costs = np.array([2.0, np.nan, 0.5])
    budget = resolve_budget(
        Budget.cost(3.0), 3, costs, prompt_tokens=np.array([0, 100, 0]), response_tokens=np.array([0, 400, 0])
    )
    assert budget.kind == "cost" and budget.cost_limit == 3.0
    np.testing.assert_allclose(budget.costs, [2.0, 1.0, 0.5])  # 500 tokens, general public -> 1.0


def test_cost_budget_without_costs_or_lengths_costs_one_per_instance() -> None:
    budget = resolve_budget(Budget.cost(2.0), 4, None)
    np.testing.assert_array_equal(budget.costs, np.ones(4))


@pytest.mark.parametrize("costs", [np.array([1.0, 0.0]), np.array([1.0, -2.0]), np.array([1.0, np.inf])])
def test_bad_supplied_costs_name_the_instance(costs: np.ndarray) -> None:
    with pytest.raises(InvalidInput) as exc:
        resolve_budget(Budget.count(1), 2, costs)
    assert field_of(exc) == "instances[1].human_cost"


def test_negative_cost_budget() -> None:
    with pytest.raises(InvalidInput) as exc:
        resolve_budget(Budget.cost(-1.0), 3, None)
    assert field_of(exc) == "config.budget.cost"


def test_auto_must_be_true() -> None:
    assert resolve_budget(Budget.auto(), 3, None).kind == "auto"
    for value in (False, 1, "true"):
        with pytest.raises(InvalidInput) as exc:
            resolve_budget(Budget("auto", value), 3, None)  # type: ignore[arg-type]
        assert field_of(exc) == "config.budget.auto"


def test_unknown_kind() -> None:
    with pytest.raises(InvalidInput) as exc:
        resolve_budget(Budget("percent", 0.5), 3, None)
    assert field_of(exc) == "config.budget"


def test_cost_formula_grows_with_length_and_expertise() -> None:
    cost = human_cost_formula(np.array([0, 0, 250, 250, 250]), np.array([0, 500, 750, 750, 750]), np.array([0, 0, 0, 1, 2]))
    assert cost[0] == pytest.approx(0.25)  # fixed share only
    assert cost[1] == pytest.approx(1.0)  # the reference instance
    assert cost[2] == pytest.approx(1.75)
    assert cost[3] / cost[2] == pytest.approx(EXPERTISE_MULTIPLIERS[1])
    assert cost[4] / cost[2] == pytest.approx(EXPERTISE_MULTIPLIERS[2])


def test_expertise_levels_from_canonical_tags() -> None:
    tags = np.zeros((3, NUM_TAGS), dtype=np.uint8)
    tags[1, tag_index("expertise_level:expert domain knowledge")] = 1
    tags[2, tag_index("expertise_level:general public")] = 1
    np.testing.assert_array_equal(expertise_levels_from_tags(tags), [-1, 2, 0])
    budget = resolve_budget(Budget.cost(5.0), 3, None, expertise_level=expertise_levels_from_tags(tags))
    np.testing.assert_allclose(budget.costs, [1.0, 3.0, 1.0])


def test_allows_and_spent() -> None:
    budget = resolve_budget(Budget.cost(2.0), 3, np.array([1.0, 1.5, 0.5]))
    assert budget.allows(np.array([True, False, True]))
    assert not budget.allows(np.array([True, True, False]))
    assert budget.spent(np.array([False, True, True])) == pytest.approx(2.0)


def test_unknown_lengths_cost_like_the_reference_instance() -> None:
    cost = human_cost_formula(np.array([np.nan, 100.0]), np.array([400.0, np.nan]))
    np.testing.assert_allclose(cost, [1.0, 1.0])
    assert np.isfinite(
        resolve_budget(Budget.cost(1.0), 2, None, np.array([np.nan, 100.0]), np.array([400.0, np.nan])).costs
    ).all()
