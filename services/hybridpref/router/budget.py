"""Human budgets: what a routing may spend on human labels.

A request states its budget one of four ways (proto ``hybridpref.v1.Budget``; in the router a :class:`Budget`):

* ``fraction`` in [0, 1]: ``floor(fraction * n)`` instances (the paper's ``int(len(df) * budget)``);
* ``count`` in [0, n]: exactly that many instances;
* ``cost`` >= 0: a total human cost; each instance costs ``costs[i]`` (supplied per instance,
  or from :func:`human_cost_formula`), and the routed instances' costs sum to at most the budget;
* ``auto`` (must be ``True``): the strategy stops where one more human label no longer raises
  the predicted score.

:func:`resolve_budget` validates the request and turns it into a :class:`ResolvedBudget`
(``kind`` is then ``"count"``, ``"cost"`` or ``"auto"``). Its checks, :func:`budget_violations`, are the
only budget validation there is; the servicer and the core run them early (before tagging) as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS, TAG_INDEX, analyzer_tag
from hybridpref_client.core.errors import FieldViolation, InvalidInput

BudgetKind = Literal["fraction", "count", "cost", "auto"]
BUDGET_KINDS: tuple[BudgetKind, ...] = ("fraction", "count", "cost", "auto")

# Cost formula constants (see human_cost_formula). One cost unit = the human cost of a
# general-public instance with REFERENCE_TOKENS tokens of prompt + both responses.
REFERENCE_TOKENS = 500.0
FIXED_SHARE = 0.25  # share of the unit cost that does not depend on length (reading the task, deciding, submitting)
# Multipliers by analyzer expertise level: 0 general public, 1 basic domain knowledge, 2 expert.
EXPERTISE_MULTIPLIERS = np.array([1.0, 1.5, 3.0])


@dataclass(frozen=True)
class Budget:
    """A budget as the caller states it (the proto ``Budget`` oneof): ``kind`` and its ``value``, a fraction
    in [0, 1], a whole count, a total cost, or ``True`` for ``auto``. Not checked on construction:
    :func:`resolve_budget` (:func:`budget_violations`) is the one validator."""

    kind: str
    value: float | int | bool

    @classmethod
    def fraction(cls, value: float) -> Budget:
        return cls("fraction", value)

    @classmethod
    def count(cls, value: int) -> Budget:
        return cls("count", value)

    @classmethod
    def cost(cls, value: float) -> Budget:
        return cls("cost", value)

    @classmethod
    def auto(cls) -> Budget:
        return cls("auto", True)


@dataclass
class ResolvedBudget:
    """A validated budget for a batch of ``n = len(costs)`` instances.

    ``kind`` is ``"count"`` (route exactly ``count`` instances), ``"cost"`` (routed ``costs``
    sum to at most ``cost_limit``) or ``"auto"`` (the strategy decides). ``costs`` (n,) float64
    > 0 is always filled, so every decision can report its human cost.
    """

    kind: str
    count: int | None
    cost_limit: float | None
    costs: np.ndarray

    @property
    def n(self) -> int:
        return len(self.costs)

    @property
    def exact_count(self) -> int:
        """A count budget's count (routed instances, exactly)."""
        if self.count is None:
            raise ValueError(f"a {self.kind} budget has no count")
        return self.count

    @property
    def cost_cap(self) -> float:
        """A cost budget's limit (routed costs sum to at most this)."""
        if self.cost_limit is None:
            raise ValueError(f"a {self.kind} budget has no cost limit")
        return self.cost_limit

    def allows(self, human_mask: np.ndarray) -> bool:
        """Whether a routing respects this budget (``auto`` allows anything)."""
        if self.kind == "count":
            return int(np.count_nonzero(human_mask)) == self.exact_count
        if self.kind == "cost":
            return float(self.costs[np.asarray(human_mask, dtype=bool)].sum()) <= self.cost_cap * (1 + 1e-12)
        return True

    def spent(self, human_mask: np.ndarray) -> float:
        """Total human cost of a routing."""
        return float(self.costs[np.asarray(human_mask, dtype=bool)].sum())


def human_cost_formula(
    prompt_tokens: np.ndarray,
    response_tokens: np.ndarray,
    expertise_level: np.ndarray | None = None,
) -> np.ndarray:
    """Default per-instance human cost, in units of "one typical instance".

    ``cost_i = (FIXED_SHARE + (1 - FIXED_SHARE) * (prompt_tokens_i + response_tokens_i) / REFERENCE_TOKENS)
    * EXPERTISE_MULTIPLIERS[expertise_level_i]``

    i.e. a quarter of the effort is fixed per task, the rest grows linearly with what the
    annotator reads (500 tokens -> 1.0), and expert prompts cost more because the annotators
    do (x1.5 basic domain knowledge, x3 expert; cf. the paper's expert vs normal MultiPref
    annotators). ``response_tokens`` is the tokens of both responses together.
    ``expertise_level`` (n,) int in {0, 1, 2} (-1 or absent: general public). Returns (n,)
    float64 > 0 (a NaN token count costs like the reference instance). Vendors with real
    prices should send ``human_cost`` per instance instead.
    """
    p = np.asarray(prompt_tokens, dtype=np.float64)
    r = np.asarray(response_tokens, dtype=np.float64)
    # an unknown length (NaN, e.g. a text the tagger could not measure) costs like the reference instance
    tokens = np.clip(np.where(np.isfinite(p + r), p + r, REFERENCE_TOKENS), 0.0, None)
    cost = FIXED_SHARE + (1.0 - FIXED_SHARE) * tokens / REFERENCE_TOKENS
    if expertise_level is not None:
        level = np.clip(np.asarray(expertise_level, dtype=np.int64), 0, len(EXPERTISE_MULTIPLIERS) - 1)
        cost = cost * EXPERTISE_MULTIPLIERS[level]
    return cost


def expertise_levels_from_tags(tag_matrix: np.ndarray) -> np.ndarray:
    """Expertise level per instance from the analyzer's ``expertise_level:*`` tags -> (n,) int64.

    0 general public, 1 basic, 2 expert; the highest tagged level wins; -1 when none is tagged.
    Expects the canonical 90-tag layout.
    """
    options = ANALYZER_DIMENSIONS["expertise_level"]
    cols = [TAG_INDEX[analyzer_tag("expertise_level", o)] for o in options]
    sub = np.asarray(tag_matrix)[:, cols] != 0
    level = np.full(len(sub), -1, dtype=np.int64)
    for k in range(len(cols)):
        level[sub[:, k]] = k
    return level


def resolve_budget(
    budget: Budget,
    n: int,
    costs: np.ndarray | None,
    prompt_tokens: np.ndarray | None = None,
    response_tokens: np.ndarray | None = None,
    expertise_level: np.ndarray | None = None,
) -> ResolvedBudget:
    """Validate a request's budget for a batch of ``n`` instances and resolve it.

    ``costs`` (n,): supplied per-instance human costs; NaN entries (or ``None``) are filled
    from :func:`human_cost_formula` when token counts are given, else with 1.0 (then a cost
    budget behaves like a count budget). Raises ``InvalidInput`` naming
    ``config.budget.<kind>`` or ``instances[i].human_cost``.
    """
    violations = budget_violations(budget, n)
    if violations:
        raise InvalidInput(violations)
    filled = _fill_costs(n, costs, prompt_tokens, response_tokens, expertise_level)
    if budget.kind == "auto":
        return ResolvedBudget("auto", None, None, filled)
    number = float(budget.value)
    if budget.kind == "fraction":
        # the tiny epsilon keeps 0.29 * 100 from flooring to 28 through binary rounding
        return ResolvedBudget("count", min(n, math.floor(number * n + 1e-9)), None, filled)
    if budget.kind == "count":
        return ResolvedBudget("count", int(number), None, filled)
    return ResolvedBudget("cost", None, number, filled)


def budget_violations(
    budget: Budget, n: int | None, *, max_cost: float = math.inf, max_n: int | None = None
) -> list[FieldViolation]:
    """What is wrong with ``budget`` for a batch of ``n`` instances (``None``: not known yet, as while a
    stream arrives; then a count is checked against ``max_n``, the most a batch may have). ``max_cost``:
    the largest cost budget the service accepts. Empty when it is fine."""
    kind, value = budget.kind, budget.value
    if kind not in BUDGET_KINDS:
        return [FieldViolation("config.budget", f"unknown budget kind {kind!r}; use one of {', '.join(BUDGET_KINDS)}")]
    field = f"config.budget.{kind}"
    if kind == "auto":
        return [] if value is True else [FieldViolation(field, f"must be true to let the router choose, got {value!r}")]
    problem = _number_problem(value)
    if problem is not None:
        return [FieldViolation(field, problem)]
    number = float(value)
    if kind == "fraction" and not 0.0 <= number <= 1.0:
        return [FieldViolation(field, f"must be in [0, 1], got {number}")]
    if kind == "count":
        if n is not None and (number != int(number) or not 0 <= number <= n):
            return [FieldViolation(field, f"must be a whole number in [0, {n}] (the batch size), got {value!r}")]
        if number != int(number) or number < 0:
            return [FieldViolation(field, f"must be a whole number >= 0, got {value!r}")]
        if max_n is not None and number > max_n:
            return [FieldViolation(field, f"must be at most {max_n}")]
    if kind == "cost" and not 0 <= number <= max_cost:
        bound = f"in [0, {max_cost:g}]" if math.isfinite(max_cost) else ">= 0"
        return [FieldViolation(field, f"must be {bound}, got {number:g}")]
    return []


def _number_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"expected a number, got {value!r}"
    if not math.isfinite(float(value)):
        return f"must be finite, got {float(value)}"
    return None


def _fill_costs(
    n: int,
    costs: np.ndarray | None,
    prompt_tokens: np.ndarray | None,
    response_tokens: np.ndarray | None,
    expertise_level: np.ndarray | None,
) -> np.ndarray:
    if prompt_tokens is not None and response_tokens is not None:
        default = human_cost_formula(prompt_tokens, response_tokens, expertise_level)
    elif expertise_level is not None:
        default = human_cost_formula(np.zeros(n), np.full(n, REFERENCE_TOKENS), expertise_level)
    else:
        default = np.ones(n)
    if default.shape != (n,):
        raise InvalidInput(
            FieldViolation("instances", f"token counts / expertise levels have shape {default.shape}, expected ({n},)")
        )
    if costs is None:
        return default.astype(np.float64)
    given = np.asarray(costs, dtype=np.float64)
    if given.shape != (n,):
        raise InvalidInput(FieldViolation("instances", f"got {given.size} human costs for {n} instances"))
    missing = np.isnan(given)
    bad = np.flatnonzero(~missing & ~((given > 0) & np.isfinite(given)))
    if len(bad):
        raise InvalidInput(
            [FieldViolation(f"instances[{i}].human_cost", f"must be a positive finite number, got {given[i]}") for i in bad[:20]]
        )
    return np.where(missing, default, given)
