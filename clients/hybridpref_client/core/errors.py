"""Domain exceptions. Cores raise these; ``grpc_errors`` maps them to
gRPC status codes in one place, and the CLI prints them without a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Longest caller-provided string quoted in an error message or a log line (ids, names).
MAX_QUOTED_CHARS = 128
# Longest field path / description of one violation (they may embed caller strings).
MAX_FIELD_CHARS = 256
MAX_DESCRIPTION_CHARS = 512


def clip(text: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis and the full length)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def quote(text: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr`` of a caller string, length-capped: use it wherever a caller's value is echoed."""
    return repr(clip(text, limit))


@dataclass(frozen=True)
class FieldViolation:
    """One bad field. ``field`` is a path such as ``instances[3].response_a`` or ``budget.fraction``.

    Both are length-capped: they may carry caller strings into error messages and logs."""

    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clip(self.field, MAX_FIELD_CHARS))
        object.__setattr__(self, "description", clip(self.description, MAX_DESCRIPTION_CHARS))

    def __iter__(self) -> Iterator[str]:
        """``field, description = violation``: unpacks like the (field, description) pairs the SDK
        returned before violations were ``FieldViolation`` objects everywhere."""
        return iter((self.field, self.description))


class HybridprefError(Exception):
    """Base class of every error this project raises on purpose: the services' domain errors below
    and the SDK's call errors (``hybridpref_client.errors.RoutingError`` and its subclasses)."""


HybridPrefError = HybridprefError  # the old spelling, kept so existing ``except`` clauses still work


class InvalidInput(HybridprefError):
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


class NotReady(HybridprefError):
    """A precondition is not met, e.g. no model bundle loaded (-> ``FAILED_PRECONDITION``)."""


class NotFound(HybridprefError):
    """A named thing (a campaign, a stored instance) does not exist for this caller (-> ``NOT_FOUND``).

    Another vendor's campaign is reported as not found too: its existence is not the caller's business."""


class AlreadyExists(HybridprefError):
    """A create found the name taken, e.g. a vendor's campaign name (-> ``ALREADY_EXISTS``)."""


class BackendUnavailable(HybridprefError):
    """A backend (LM endpoint, downstream service) is down or overloaded (-> ``UNAVAILABLE``).

    ``retry_after_s`` tells the caller when a retry may succeed, if known.
    """

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(HybridprefError):
    """The caller's deadline ran out before the work finished (-> ``DEADLINE_EXCEEDED``)."""


class Cancelled(HybridprefError):
    """The call was cancelled (the caller left); its work stops (-> ``CANCELLED``)."""


class Unauthenticated(HybridprefError):
    """No API key, or one that is not known (-> ``UNAUTHENTICATED``)."""


class PermissionDenied(HybridprefError):
    """A known key without permission for the method (-> ``PERMISSION_DENIED``)."""


class QuotaExceeded(HybridprefError):
    """A per-vendor quota is used up (-> ``RESOURCE_EXHAUSTED`` with ``google.rpc.RetryInfo``).

    ``retry_after_s``: when a retry of the same size may succeed (``None``: it never will,
    e.g. one request larger than the whole per-minute quota)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
