"""The one place where domain exceptions become gRPC statuses (with rich details)."""

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
    InvalidInput,
    NotFound,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)


def status_for(exc: BaseException) -> grpc.Status | None:
    """A ``grpc.Status`` (code, message, trailing metadata with details) for a domain
    exception, or ``None`` when it is not one (an internal bug)."""
    if isinstance(exc, InvalidInput):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, str(exc), bad_request)
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


def _retry_info(retry_after_s: float | None) -> error_details_pb2.RetryInfo | None:
    if retry_after_s is None:
        return None
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _status(code: int, message: str, detail=None) -> grpc.Status:
    proto = status_pb2.Status(code=code, message=message)
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


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """Client side: the (field, description) pairs of an INVALID_ARGUMENT error."""
    return [(v.field, v.description) for bad in _details(error, error_details_pb2.BadRequest) for v in bad.field_violations]


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """Client side: the server's suggested retry delay, if it sent one."""
    infos = _details(error, error_details_pb2.RetryInfo)
    return infos[0].retry_delay.ToNanoseconds() / 1e9 if infos else None
