"""Server interceptors, one per cross-cutting concern.

Order (outermost first), fixed in ``hybridpref.server.server.build_interceptors``:

1. ``RequestIdInterceptor`` binds the request id (``x-request-id`` metadata, cleaned and cut
   to 128 characters, or a new one) and the service name to the logging context, so every
   log line of the call, and every downstream call, carries it;
2. ``MetricsInterceptor`` counts requests by final status code, times them, tracks
   in-flight calls and writes the one access-log line per call; it sees the code set
   by every layer below it (auth and quota refusals included);
3. ``ErrorInterceptor`` maps domain exceptions (``hybridpref_client.core.errors``) to
   statuses with rich details, and unexpected ones to ``INTERNAL`` after logging them;
   everything below raises domain exceptions and lets it do the mapping;
4. ``AccessInterceptor`` (only when an API keys file is configured) checks the caller's key
   (``UNAUTHENTICATED`` / ``PERMISSION_DENIED``), its concurrent calls and, per request
   message, its instances-per-minute quota (``RESOURCE_EXHAUSTED`` + ``RetryInfo``);
5. ``DeadlineInterceptor`` makes the call's ``Deadline`` (the caller's, capped by the server's
   maximum) and cancels it when the call ends, so worker threads stop;
6. ``DecodeInterceptor`` turns undecodable request bytes into ``INVALID_ARGUMENT`` (counted
   in ``hybridpref_undecodable_requests_total``) instead of gRPC's ``UNKNOWN``.

Health checks and reflection pass 4 and 5 untouched (probes need no key; ``Watch`` streams
live longer than any call deadline).

Each concern is an async context manager around the handler's behaviour; ``wrap_handler``
applies it to all four RPC shapes (unary/stream x unary/stream); ``wrap_requests`` runs a
hook on every request message.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import structlog

from hybridpref.server import deadline as deadlines
from hybridpref.server import logs
from hybridpref.server.auth import KeyStore, VendorPolicy, bearer_key, bind_vendor, reset_vendor
from hybridpref_client.core.errors import (
    DeadlineExceeded,
    FieldViolation,
    HybridprefError,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from hybridpref_client.core.grpc_errors import status_for
from hybridpref.server.metrics import Metrics
from hybridpref.server.quota import QuotaBook

# grpc ships no type information (its objects are Any to mypy); these names say what is meant.
Context = Any  # grpc.aio.ServicerContext
HandlerCallDetails = Any  # grpc.HandlerCallDetails
Continuation = Callable[[HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Deserializer = Callable[[bytes], Any]
Enter = Callable[[Context], AbstractAsyncContextManager[None]]
# Methods every caller may use without a key, and that no call deadline applies to.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID_JUNK = re.compile(r"[^A-Za-z0-9._:/+=-]")


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


def _kwargs(handler: grpc.RpcMethodHandler, deserializer: Deserializer | None = None) -> dict[str, Any]:
    return {"request_deserializer": deserializer or handler.request_deserializer,
            "response_serializer": handler.response_serializer}


def wrap_handler(handler: grpc.RpcMethodHandler, enter: Enter) -> grpc.RpcMethodHandler:
    """Return ``handler`` with its behaviour run inside ``enter(context)``."""
    kwargs = _kwargs(handler)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            async with enter(context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: Context) -> Any:
            async with enter(context):
                return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_stream = handler.unary_stream or handler.stream_stream
    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

    async def streaming(request_or_iterator: Any, context: Context) -> AsyncIterator[Any]:
        async with enter(context):
            async for item in inner_stream(request_or_iterator, context):
                yield item

    return factory(streaming, **kwargs)


def wrap_requests(handler: grpc.RpcMethodHandler, hook: Callable[[Any], None],
                  deserializer: Deserializer | None = None) -> grpc.RpcMethodHandler:
    """Return ``handler`` calling ``hook(message)`` on each request message before the handler
    sees it (streams: as each message is read); ``deserializer`` replaces the handler's."""
    kwargs = _kwargs(handler, deserializer)

    async def hooked(iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in iterator:
            hook(message)
            yield message

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            hook(request)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: Context) -> Any:
            return await inner_su(hooked(request_iterator), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            hook(request)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for item in inner_ss(hooked(request_iterator), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


class _AroundInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        return wrap_handler(handler, lambda context: self.around(method, metadata, context))

    def around(self, method: str, metadata: dict[str, Any], context: Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError


def clean_request_id(value: object) -> str | None:
    """A caller's request id made safe for logs and replies: printable token characters only,
    at most 128 of them; ``None`` when nothing usable is left."""
    if not isinstance(value, str):
        return None
    cleaned = _REQUEST_ID_JUNK.sub("", value)[:MAX_REQUEST_ID_CHARS]
    return cleaned or None


class RequestIdInterceptor(_AroundInterceptor):
    def __init__(self, service: str):
        self.service = service

    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        request_id = clean_request_id(metadata.get(logs.REQUEST_ID_HEADER)) or logs.new_request_id()
        token = logs.bind_request_id(request_id)
        with structlog.contextvars.bound_contextvars(service=self.service, method=method.rsplit("/", 1)[-1][:64]):
            try:
                yield
            finally:
                logs.reset_request_id(token)


class MetricsInterceptor(_AroundInterceptor):
    def __init__(self, service: str, metrics: Metrics):
        self.service = service
        self.metrics = metrics

    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        name = method.rsplit("/", 1)[-1]
        in_flight = self.metrics.in_flight.labels(self.service, name)
        in_flight.inc()
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = _code_name(context) or "UNKNOWN"
            raise
        else:
            code = _code_name(context) or "OK"
        finally:
            elapsed = time.perf_counter() - start
            in_flight.dec()
            self.metrics.latency.labels(self.service, name).observe(elapsed)
            self.metrics.requests.labels(self.service, name, code).inc()
            # The access log: one line per call, carrying the request id bound above
            # (not for health probes, which Kubernetes sends every few seconds).
            if not method.startswith("/grpc.health."):
                structlog.get_logger().info("rpc", code=code, seconds=round(elapsed, 4))


def _code_name(context: Context) -> str | None:
    try:
        code = context.code()
    except Exception:  # older grpc: no code() on aio contexts
        return None
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return next((str(c.name) for c in grpc.StatusCode if c.value[0] == code), str(code))


class ErrorInterceptor(_AroundInterceptor):
    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        log = structlog.get_logger()
        try:
            yield
        except HybridprefError as exc:
            status = status_for(exc)
            assert status is not None
            log.info("rpc_rejected", code=status.code.name, error=str(exc)[:1000])
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # a bug: never leak a traceback to the caller
            log.exception("rpc_internal_error", error=repr(exc)[:1000])
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {logs.current_request_id()}); see the service log",
            )


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """API keys, method permissions and per-vendor quotas (see ``hybridpref.server.auth``)."""

    def __init__(self, keys: KeyStore, quotas: QuotaBook | None = None,
                 count_instances: Callable[[Any], int] | None = None):
        self.keys = keys
        self.quotas = quotas or QuotaBook()
        self.count_instances = count_instances or instances_in

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        policy_box: list[VendorPolicy] = []

        def take(message: Any) -> None:
            if policy_box:
                self.quotas.take_instances(policy_box[0], self.count_instances(message))

        @asynccontextmanager
        async def around(context: Context) -> AsyncIterator[None]:
            policy = self._authorize(method, metadata)
            policy_box.append(policy)
            leave = self.quotas.enter_call(policy)
            token = bind_vendor(policy.vendor)  # the servicers read it (campaigns belong to a vendor)
            try:
                with structlog.contextvars.bound_contextvars(vendor=policy.vendor):
                    yield
            finally:
                reset_vendor(token)
                leave()

        # The quota hook runs inside ``around`` (wrap_handler is the outer layer).
        return wrap_handler(wrap_requests(handler, take), around)

    def _authorize(self, method: str, metadata: dict[str, Any]) -> VendorPolicy:
        key = bearer_key(metadata)
        if key is None:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        policy = self.keys.lookup(key)
        if policy is None:
            raise Unauthenticated("unknown API key")
        if not policy.allows(method):
            raise PermissionDenied(f"vendor {policy.vendor!r} may not call {method.rsplit('/', 1)[-1][:64]}")
        return policy


def instances_in(message: Any) -> int:
    """Instances a request message carries (``instances``, or a stream ``chunk``'s)."""
    instances = getattr(message, "instances", None)
    if instances is None and hasattr(message, "WhichOneof"):
        try:
            if message.WhichOneof("item") == "chunk":
                instances = message.chunk.instances
        except ValueError:  # no oneof named "item"
            return 0
    try:
        return len(instances) if instances is not None else 0
    except TypeError:
        return 0


class DeadlineInterceptor(_AroundInterceptor):
    """Binds the call's ``Deadline``; a call past the server's maximum is stopped with
    ``DEADLINE_EXCEEDED`` even when the caller set no deadline; the deadline is cancelled when
    the call ends (normally, by error, or because the caller left)."""

    def __init__(self, max_deadline_s: float | None):
        self.max_deadline_s = max_deadline_s

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if is_open(handler_call_details.method):
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        deadline = deadlines.Deadline.capped(context.time_remaining(), self.max_deadline_s)
        token = deadlines.bind(deadline)
        outcome = "ended"
        try:
            if deadline.end is None:
                yield
            else:
                # Stop a little after the deadline, so that cooperative checks report first.
                async with asyncio.timeout(max(0.0, deadline.remaining() or 0.0) + 0.25):
                    yield
        except TimeoutError:
            outcome = "expired"
            raise DeadlineExceeded(f"the call ran past its deadline ({self._describe(context)})") from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            deadline.cancel(outcome)
            deadlines.reset(token)

    def _describe(self, context: Context) -> str:
        return f"server maximum {self.max_deadline_s:g} s" if self.max_deadline_s else "caller's deadline"


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything a corrupt message triggers
            return _Undecodable(exc)

    return deserialize


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, metrics: Metrics):
        self.service = service
        self.metrics = metrics

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        name = handler_call_details.method.rsplit("/", 1)[-1][:64]

        def check(message: Any) -> None:
            if isinstance(message, _Undecodable):
                self.metrics.undecodable.labels(self.service, name).inc()
                raise InvalidInput(FieldViolation(
                    "request", f"could not decode the request message ({type(message.error).__name__}): "
                               "not a serialized message of this method's request type"))

        return wrap_requests(handler, check, deserializer=_safe(handler.request_deserializer))
