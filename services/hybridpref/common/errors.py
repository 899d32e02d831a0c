"""Domain exceptions. Cores raise these; ``hybridpref.common.grpc_errors`` maps them to
gRPC status codes in one place, and the CLI prints them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field. ``field`` is a path such as ``instances[3].response_a`` or ``budget.fraction``."""

    field: str
    description: str


class HybridPrefError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInput(HybridPrefError):
    """The caller's input is wrong (-> ``INVALID_ARGUMENT`` with ``google.rpc.BadRequest``)."""

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str | None = None):
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not self.violations:
            raise ValueError("InvalidInput needs at least one FieldViolation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = len(self.violations) - 5
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(message or f"invalid input: {summary}")


class NotReady(HybridPrefError):
    """A precondition is not met, e.g. no model bundle loaded (-> ``FAILED_PRECONDITION``)."""


class BackendUnavailable(HybridPrefError):
    """A backend (LM endpoint, downstream service) is down or overloaded (-> ``UNAVAILABLE``).

    ``retry_after_s`` tells the caller when a retry may succeed, if known.
    """

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(HybridPrefError):
    """The caller's deadline ran out before the work finished (-> ``DEADLINE_EXCEEDED``)."""


def collect(violations: list[FieldViolation]) -> None:
    """Raise ``InvalidInput`` if any violations were collected; validation gathers all first."""
    if violations:
        raise InvalidInput(violations)
