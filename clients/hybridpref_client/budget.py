"""The human budget of a routing call, always explicit.

    client.route(rows, fraction=0.25)          # a quarter of the batch to humans
    client.route(rows, count=100)              # 100 instances to humans
    client.route(rows, cost=500.0)             # human cost up to 500 (per-instance ``human_cost``)
    client.route(rows, budget="auto")          # the strategy picks the size
    client.route(rows, budget=Budget.parse("25%"))   # the CLI's spellings: 0.25, 25%, count:100, cost:500, auto

A bare number as ``budget`` (``budget=0.25``, ``budget=100``) is deprecated: an int is read as a count
and a float as a fraction, so ``budget=1`` was one instance and ``budget=1.0`` all of them. Every
bare number now warns (``FutureWarning``, with the keyword to write instead), and the one value where
the two readings collide the most, ``1`` / ``1.0``, is refused (``InvalidInput``). A later release
will refuse every bare number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from hybridpref.v1 import common_pb2
from hybridpref_client.core.errors import FieldViolation, InvalidInput

SPELLINGS = "0.25 (a fraction), 25%, count:100, cost:500 or auto"


@dataclass(frozen=True)
class Budget:
    """Exactly one of ``fraction`` (in [0, 1]), ``count`` (a whole number >= 0), ``cost``
    (total human cost >= 0) or ``auto``. Invalid values raise ``InvalidInput`` naming the field as
    the router would (``config.budget.fraction``); an unreadable spelling names ``budget``."""

    fraction: float | None = None
    count: int | None = None
    cost: float | None = None
    auto: bool = False

    def __post_init__(self) -> None:
        set_ = [name for name in ("fraction", "count", "cost") if getattr(self, name) is not None] + (
            ["auto"] if self.auto else []
        )
        if len(set_) != 1:
            raise InvalidInput(
                FieldViolation("budget", f"give exactly one of fraction, count, cost or auto (got {', '.join(set_) or 'none'})")
            )
        if self.fraction is not None and (
            isinstance(self.fraction, bool) or not _number(self.fraction) or not 0 <= self.fraction <= 1
        ):
            raise InvalidInput(FieldViolation("config.budget.fraction", f"must be a number in [0, 1], got {self.fraction!r}"))
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0):
            raise InvalidInput(FieldViolation("config.budget.count", f"must be a whole number >= 0, got {self.count!r}"))
        if self.cost is not None and (isinstance(self.cost, bool) or not _number(self.cost) or self.cost < 0):
            raise InvalidInput(FieldViolation("config.budget.cost", f"must be a finite number >= 0, got {self.cost!r}"))

    @classmethod
    def parse(cls, text: str) -> Budget:
        """The CLI's spellings: ``0.25``, ``25%``, ``count:100``, ``cost:500``, ``auto``."""
        value = str(text).strip().lower()
        try:
            if value == "auto":
                return cls(auto=True)
            if value.startswith("count:"):
                return cls(count=int(value.split(":", 1)[1]))
            if value.startswith("cost:"):
                return cls(cost=float(value.split(":", 1)[1]))
            if value.endswith("%"):
                return cls(fraction=float(value[:-1]) / 100)
            if value.startswith("fraction:"):
                return cls(fraction=float(value.split(":", 1)[1]))
            return cls(fraction=float(value))
        except ValueError:
            raise InvalidInput(FieldViolation("budget", f"cannot read {text!r}; use {SPELLINGS}")) from None

    def to_proto(self) -> common_pb2.Budget:
        if self.auto:
            return common_pb2.Budget(auto=True)
        if self.count is not None:
            return common_pb2.Budget(count=self.count)
        if self.cost is not None:
            return common_pb2.Budget(cost=float(self.cost))
        return common_pb2.Budget(fraction=float(self.fraction))  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.auto:
            return "auto"
        if self.count is not None:
            return f"count:{self.count}"
        if self.cost is not None:
            return f"cost:{self.cost:g}"
        return f"fraction:{self.fraction:g}"


@dataclass(frozen=True)
class Cost:
    """A cost budget: the total human cost to spend (same as ``cost=total``)."""

    total: float


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def resolve_budget(
    budget: object = None,
    *,
    fraction: float | None = None,
    count: int | None = None,
    cost: float | None = None,
    stacklevel: int = 2,
) -> Budget:
    """The one ``Budget`` a call asked for: exactly one of ``budget`` (a ``Budget``, ``Cost``,
    ``"auto"`` or a CLI spelling; a bare number is deprecated, see the module docstring),
    ``fraction``, ``count`` or ``cost``. ``stacklevel`` points the deprecation warning at the caller."""
    given = {
        name: value
        for name, value in (("budget", budget), ("fraction", fraction), ("count", count), ("cost", cost))
        if value is not None
    }
    if len(given) != 1:
        what = ", ".join(f"{k}=" for k in given) or "none"
        raise InvalidInput(FieldViolation("budget", f"give exactly one of fraction=, count=, cost= or budget= (got {what})"))
    if fraction is not None:
        return Budget(fraction=fraction)
    if count is not None:
        return Budget(count=count)
    if cost is not None:
        return Budget(cost=cost)
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, Cost):
        return Budget(cost=budget.total)
    if isinstance(budget, str):
        return Budget.parse(budget)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise InvalidInput(
            FieldViolation("budget", f"expected fraction=, count=, cost= or a Budget, got {type(budget).__name__}")
        )
    if budget == 1:
        raise InvalidInput(
            FieldViolation(
                "budget",
                "budget=1 is ambiguous (budget=1 meant one instance, budget=1.0 all of them): pass count=1 or fraction=1.0",
            )
        )
    explicit = f"count={budget}" if isinstance(budget, int) else f"fraction={budget}"
    warnings.warn(
        f"a bare number as budget is deprecated and will be refused in a later release: budget={budget!r} "
        f"is read as {explicit}; pass {explicit} instead",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )
    return Budget(count=budget) if isinstance(budget, int) else Budget(fraction=float(budget))
