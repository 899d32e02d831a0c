"""Human budgets: what a routing may spend on human labels.

A request states its budget one of four ways (proto ``hybridpref.v1.Budget``):

* ``fraction`` in [0, 1]: ``floor(fraction * n)`` instances (the paper's ``int(len(df) * budget)``);
* ``count`` in [0, n]: exactly that many instances;
* ``cost`` >= 0: a total human cost; each instance costs ``costs[i]`` (supplied per instance,
  or from :func:`human_cost_formula`), and the routed instances' costs sum to at most the budget;
* ``auto`` (must be ``True``): the strategy stops where one more human label no longer raises
  the predicted score.

:func:`resolve_budget` validates the request and turns it into a :class:`ResolvedBudget`
(``kind`` is then ``"count"``, ``"cost"`` or ``"auto"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS, TAG_INDEX, analyzer_tag

BUDGET_KINDS = ("fraction", "count", "cost", "auto")

# Cost formula constants (see human_cost_formula). One cost unit = the human cost of a
# general-public instance with REFERENCE_TOKENS tokens of prompt + both responses.
REFERENCE_TOKENS = 500.0
FIXED_SHARE = 0.25  # share of the unit cost that does not depend on length (reading the task, deciding, submitting)
# Multipliers by analyzer expertise level: 0 general public, 1 basic domain knowledge, 2 expert.
EXPERTISE_MULTIPLIERS = np.array([1.0, 1.5, 3.0])


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

    def allows(self, human_mask: np.ndarray) -> bool:
        """Whether a routing respects this budget (``auto`` allows anything)."""
        if self.kind == "count":
            return int(np.count_nonzero(human_mask)) == self.count
        if self.kind == "cost":
            return float(self.costs[np.asarray(human_mask, dtype=bool)].sum()) <= self.cost_limit * (1 + 1e-12)
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
    kind: str,
    value: float | int | bool,
    n: int,
    costs: np.ndarray | None,
    prompt_tokens: np.ndarray | None = None,
    response_tokens: np.ndarray | None = None,
    expertise_level: np.ndarray | None = None,
) -> ResolvedBudget:
    """Validate a request's budget for a batch of ``n`` instances.

    ``costs`` (n,): supplied per-instance human costs; NaN entries (or ``None``) are filled
    from :func:`human_cost_formula` when token counts are given, else with 1.0 (then a cost
    budget behaves like a count budget). Raises ``InvalidInput`` naming
    ``config.budget.<kind>`` or ``instances[i].human_cost``.
    """
    if kind not in BUDGET_KINDS:
        raise InvalidInput(FieldViolation("config.budget", f"unknown budget kind {kind!r}; use one of {', '.join(BUDGET_KINDS)}"))
    filled = _fill_costs(n, costs, prompt_tokens, response_tokens, expertise_level)
    field = f"config.budget.{kind}"
    if kind == "auto":
        if value is not True:
            raise InvalidInput(FieldViolation(field, f"must be true to let the router choose, got {value!r}"))
        return ResolvedBudget("auto", None, None, filled)
    number = _finite_number(field, value)
    if kind == "fraction":
        if not 0.0 <= number <= 1.0:
            raise InvalidInput(FieldViolation(field, f"must be in [0, 1], got {number}"))
        # the tiny epsilon keeps 0.29 * 100 from flooring to 28 through binary rounding
        return ResolvedBudget("count", min(n, math.floor(number * n + 1e-9)), None, filled)
    if kind == "count":
        if number != int(number) or number < 0 or number > n:
            raise InvalidInput(FieldViolation(field, f"must be a whole number in [0, {n}] (the batch size), got {value!r}"))
        return ResolvedBudget("count", int(number), None, filled)
    if number < 0:
        raise InvalidInput(FieldViolation(field, f"must be >= 0, got {number}"))
    return ResolvedBudget("cost", None, number, filled)


def _finite_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInput(FieldViolation(field, f"expected a number, got {value!r}"))
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(FieldViolation(field, f"must be finite, got {number}"))
    return number


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
        raise InvalidInput(FieldViolation("instances", f"token counts / expertise levels have shape {default.shape}, expected ({n},)"))
    if costs is None:
        return default.astype(np.float64)
    given = np.asarray(costs, dtype=np.float64)
    if given.shape != (n,):
        raise InvalidInput(FieldViolation("instances", f"got {given.size} human costs for {n} instances"))
    missing = np.isnan(given)
    bad = np.flatnonzero(~missing & ~((given > 0) & np.isfinite(given)))
    if len(bad):
        raise InvalidInput([FieldViolation(f"instances[{i}].human_cost", f"must be a positive finite number, got {given[i]}") for i in bad[:20]])
    return np.where(missing, default, given)
