"""The SDK's exceptions: one hierarchy under ``HybridprefError``.

    HybridprefError                  everything the SDK (and the services) raise on purpose
    ├── InvalidInput                 caught before any call: a bad row, budget or option (``.violations``)
    └── RoutingError                 a call failed: ``.code`` (grpc.StatusCode), ``.details``, ``.violations``,
        │                            ``.violation_total``, ``.retry_after_s``, ``.request_id``, ``.attempts``
        ├── InvalidArgumentError     INVALID_ARGUMENT / OUT_OF_RANGE: the server named the bad fields
        ├── UnauthenticatedError     UNAUTHENTICATED: no API key, or an unknown one
        ├── PermissionDeniedError    PERMISSION_DENIED: the key may not call this method
        ├── ResourceExhaustedError   RESOURCE_EXHAUSTED: a quota (``retry_after_s`` says when to retry)
        │                            or a size limit (``retry_after_s`` is None: retrying cannot help)
        ├── UnavailableError         UNAVAILABLE: the router or a backend is down (retried first)
        ├── DeadlineExceededError    DEADLINE_EXCEEDED: ``timeout_s`` ran out
        ├── FailedPreconditionError  FAILED_PRECONDITION: e.g. the router has no routing model loaded
        ├── NotFoundError            NOT_FOUND: no such campaign (another vendor's reads the same)
        └── AlreadyExistsError       ALREADY_EXISTS: a campaign of that name exists

Every class is exported from ``hybridpref_client``. Violations are ``FieldViolation(field,
description)`` objects in both ``InvalidInput`` and ``RoutingError`` (they unpack as pairs).
"""

from __future__ import annotations

import grpc

from hybridpref_client.core.errors import FieldViolation, HybridprefError, InvalidInput
from hybridpref_client.core.grpc_errors import field_violations, retry_delay_s, violation_total

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "NotFoundError",
    "HybridprefError",
    "InvalidArgumentError",
    "InvalidInput",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RoutingError",
    "UnauthenticatedError",
    "UnavailableError",
    "routing_error",
]


class RoutingError(HybridprefError):
    """A failed call (after any retries): ``code`` (grpc.StatusCode), the server's message
    (``details``), the field violations of bad input (the first ones listed; ``violation_total``
    counts them all), ``retry_after_s`` when the server sent a ``google.rpc.RetryInfo``,
    the call's ``request_id`` and how many ``attempts`` were made."""

    def __init__(self, error: grpc.RpcError, request_id: str = ""):
        self.code: grpc.StatusCode = error.code()
        self.details: str = error.details() or ""
        self.violations: list[FieldViolation] = field_violations(error)
        self.violation_total: int = violation_total(error)
        self.retry_after_s: float | None = retry_delay_s(error)
        self.request_id = request_id
        self.attempts = 1
        # True once the server had answered part of a stream: a retry would route it twice.
        self.partial = False
        super().__init__(f"{self.code.name}: {self.details}")


class InvalidArgumentError(RoutingError):
    """The server refused the input (``violations`` name the fields, e.g. ``instances[3].response_a``)."""


class UnauthenticatedError(RoutingError):
    """No API key, or one the router does not know."""


class PermissionDeniedError(RoutingError):
    """The API key may not call this method."""


class ResourceExhaustedError(RoutingError):
    """A quota is used up (``retry_after_s``: when a retry may succeed) or a size limit was hit
    (``retry_after_s`` is None: the same request will never succeed; split it)."""


class UnavailableError(RoutingError):
    """The router or one of its backends is down or overloaded."""


class DeadlineExceededError(RoutingError):
    """The call's deadline (``timeout_s``) ran out."""


class FailedPreconditionError(RoutingError):
    """The router cannot serve the call in its current state (e.g. no routing model loaded)."""


class NotFoundError(RoutingError):
    """The named campaign does not exist for this API key (another vendor's campaign reads as not found)."""


class AlreadyExistsError(RoutingError):
    """A campaign of that name already exists for this API key."""


_BY_CODE: dict[grpc.StatusCode, type[RoutingError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def routing_error(error: grpc.RpcError, request_id: str = "") -> RoutingError:
    """The ``RoutingError`` subclass for ``error``'s status code (``RoutingError`` itself for the rest)."""
    return _BY_CODE.get(error.code(), RoutingError)(error, request_id)
