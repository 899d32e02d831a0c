"""The one place where domain exceptions become gRPC statuses (with rich details).

Size: the status travels in trailing metadata (``grpc-message``, percent-encoded, and
``grpc-status-details-bin``, base64), which gRPC refuses above 16 KiB (its hard limit; above the
8 KiB soft limit it may refuse it at random). A refused trailer reaches the caller as
``RESOURCE_EXHAUSTED`` with no field named, so the message is cut to ``MAX_MESSAGE_BYTES`` and a
``BadRequest`` lists at most ``MAX_LISTED_VIOLATIONS`` violations within ``MAX_DETAILS_BYTES``: the
first ones in order, plus a ``google.rpc.ErrorInfo`` (reason ``FIELD_VIOLATIONS_TRUNCATED``) with
the total count. Worst case (every string multi-byte) the trailers stay under 6 KiB.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hybridpref_client.core.errors import (
    AlreadyExists,
    BackendUnavailable,
    Cancelled,
    DeadlineExceeded,
    FieldViolation,
    InvalidInput,
    NotFound,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)

# Bounds of what one error status carries (see the module docstring).
MAX_MESSAGE_BYTES = 512  # UTF-8 bytes of the status message (percent-encoding may triple them)
MAX_DETAILS_BYTES = 3072  # the serialized google.rpc.Status (base64 adds a third)
MAX_LISTED_VIOLATIONS = 50
MAX_VIOLATION_FIELD_BYTES = 256
MAX_VIOLATION_DESCRIPTION_BYTES = 512
TRUNCATED_REASON = "FIELD_VIOLATIONS_TRUNCATED"
ERROR_DOMAIN = "hybridpref"


def status_for(exc: BaseException) -> grpc.Status | None:
    """A ``grpc.Status`` (code, message, trailing metadata with details) for a domain
    exception, or ``None`` when it is not one (an internal bug)."""
    if isinstance(exc, InvalidInput):
        message = clip_utf8(str(exc), MAX_MESSAGE_BYTES)
        return _status(
            code_pb2.INVALID_ARGUMENT, message, *bad_request_details(exc.violations, MAX_DETAILS_BYTES - len(message.encode()))
        )
    if isinstance(exc, NotReady):
        return _status(code_pb2.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, NotFound):
        return _status(code_pb2.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExists):
        return _status(code_pb2.ALREADY_EXISTS, str(exc))
    if isinstance(exc, BackendUnavailable):
        return _status(code_pb2.UNAVAILABLE, str(exc), _retry_info(exc.retry_after_s))
    if isinstance(exc, DeadlineExceeded):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, Cancelled):
        return _status(code_pb2.CANCELLED, str(exc))
    if isinstance(exc, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, str(exc))
    if isinstance(exc, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, str(exc))
    if isinstance(exc, QuotaExceeded):
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc), _retry_info(exc.retry_after_s))
    return None


def clip_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary, ending in "...")."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(0, limit - 3)].decode("utf-8", "ignore") + "..."


def bad_request_details(violations: list[FieldViolation], budget: int) -> list:
    """``[BadRequest]``, or ``[BadRequest, ErrorInfo]`` when not every violation fits: the first
    violations (at least one, at most ``MAX_LISTED_VIOLATIONS``) whose encoding fits ``budget``
    bytes, and an ``ErrorInfo`` whose metadata gives ``total`` and ``listed``."""
    info_room = 96  # an ErrorInfo with two short counts, packed in an Any
    listed: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for v in violations[:MAX_LISTED_VIOLATIONS]:
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=clip_utf8(v.field, MAX_VIOLATION_FIELD_BYTES),
            description=clip_utf8(v.description, MAX_VIOLATION_DESCRIPTION_BYTES),
        )
        size = entry.ByteSize() + 3  # field tag and length prefix
        if listed and used + size > budget - info_room:
            break
        listed.append(entry)
        used += size
    details: list = [error_details_pb2.BadRequest(field_violations=listed)]
    if len(listed) < len(violations):
        details.append(
            error_details_pb2.ErrorInfo(
                reason=TRUNCATED_REASON, domain=ERROR_DOMAIN, metadata={"total": str(len(violations)), "listed": str(len(listed))}
            )
        )
    return details


def _retry_info(retry_after_s: float | None) -> error_details_pb2.RetryInfo | None:
    if retry_after_s is None:
        return None
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _status(code: int, message: str, *details) -> grpc.Status:
    proto = status_pb2.Status(code=code, message=clip_utf8(message, MAX_MESSAGE_BYTES))
    for detail in details:
        if detail is not None:
            packed = any_pb2.Any()
            packed.Pack(detail)
            proto.details.append(packed)
    return rpc_status.to_status(proto)


def _details(error: grpc.RpcError, message_type):
    """Client side: the details of ``message_type`` packed in the error's rich status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    out = []
    for detail in status.details if status is not None else ():
        if detail.Is(message_type.DESCRIPTOR):
            unpacked = message_type()
            detail.Unpack(unpacked)
            out.append(unpacked)
    return out


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """Client side: the field violations listed in an INVALID_ARGUMENT error (the first ones when
    the server had more than fit: ``violation_total`` counts them all)."""
    return [
        FieldViolation(v.field, v.description)
        for bad in _details(error, error_details_pb2.BadRequest)
        for v in bad.field_violations
    ]


def violation_total(error: grpc.RpcError) -> int:
    """Client side: how many violations the server found (more than listed when it truncated them)."""
    listed = len(field_violations(error))
    for info in _details(error, error_details_pb2.ErrorInfo):
        if info.reason == TRUNCATED_REASON and info.metadata.get("total", "").isdigit():
            return max(listed, int(info.metadata["total"]))
    return listed


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """Client side: the server's suggested retry delay, if it sent one."""
    infos = _details(error, error_details_pb2.RetryInfo)
    return infos[0].retry_delay.ToNanoseconds() / 1e9 if infos else None
