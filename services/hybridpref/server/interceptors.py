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
4. ``AdmissionInterceptor`` caps the calls running at once per server and per connection and
   closes request streams that stay silent (``hybridpref.server.admission``);
5. ``AccessInterceptor`` (only when an API keys file is configured) checks the caller's key
   on the call's metadata, before any request byte is read (``UNAUTHENTICATED`` /
   ``PERMISSION_DENIED``: the message is never received nor decoded), its concurrent calls and,
   per request message, its instances-per-minute quota (``RESOURCE_EXHAUSTED`` + ``RetryInfo``);
6. ``DeadlineInterceptor`` makes the call's ``Deadline`` (the caller's, capped by the server's
   maximum) and cancels it when the call ends, so worker threads stop;
7. ``DecodeInterceptor`` turns undecodable request bytes into ``INVALID_ARGUMENT`` (counted
   in ``hybridpref_undecodable_requests_total``) instead of gRPC's ``UNKNOWN``, after calls
   that brought large messages gives the freed memory back (``hybridpref.server.memory``), and
   serves every method as request-streaming (``read_on_demand``), so that every layer above runs
   before gRPC reads a request byte.

Health checks and reflection pass 4, 5 and 6 untouched (probes need no key; ``Watch`` streams
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
from hybridpref.server.admission import Admission, idle_limited
from hybridpref.server.auth import KEY_PREFIX, KeyStore, VendorPolicy, bearer_key, bind_vendor, reset_vendor
from hybridpref.server.memory import MemoryReturner
from hybridpref.server.metrics import Metrics
from hybridpref.server.quota import QuotaBook
from hybridpref_client.core.errors import (
    DeadlineExceeded,
    FieldViolation,
    HybridprefError,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from hybridpref_client.core.grpc_errors import status_for

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
    return {
        "request_deserializer": deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }


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


def wrap_requests(
    handler: grpc.RpcMethodHandler, hook: Callable[[Any], None], deserializer: Deserializer | None = None
) -> grpc.RpcMethodHandler:
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


def read_on_demand(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` served as request-streaming: gRPC calls a request-streaming behaviour at once and
    reads a message only when it is asked for, whereas it reads (and buffers, up to the receive limit)
    a unary request before any interceptor's behaviour runs. Served this way, every check of the
    interceptors (API key, concurrency, quotas) happens before a byte of the request is read. The
    wire format is the same for both shapes; the unary behaviour gets the one message it expects."""
    kwargs = _kwargs(handler)
    if handler.request_streaming:
        return handler

    async def first(request_iterator: AsyncIterator[Any]) -> Any:
        """The one request message, read to the end of the request stream: a half-read iterator would
        keep the message alive in gRPC's receiver (and in every wrapper's frame) after the call."""
        messages = [message async for message in request_iterator]
        if len(messages) != 1:
            raise InvalidInput(FieldViolation("request", f"expected one request message, got {len(messages)}"))
        return messages.pop()

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: Context) -> Any:
            return await inner_uu(await first(request_iterator), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_us = handler.unary_stream

    async def stream_stream(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for item in inner_us(await first(request_iterator), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


class _AroundInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, handler_call_details: HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        return wrap_handler(handler, lambda context: self.around(method, metadata, context))

    def around(self, method: str, metadata: dict[str, Any], context: Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError


def clean_request_id(value: object, secret: str | None = None) -> str | None:
    """A caller's request id made safe for logs and replies: printable token characters only,
    at most 128 of them; ``None`` when nothing usable is left, or when it carries an API key (our
    keys' ``hpk_`` prefix, or the call's own bearer key ``secret``): request ids are logged and
    propagated to every backend, keys must never be."""
    if not isinstance(value, str):
        return None
    if KEY_PREFIX in value.lower() or (secret and len(secret) >= 8 and secret in value):
        return None
    cleaned = _REQUEST_ID_JUNK.sub("", value)[:MAX_REQUEST_ID_CHARS]
    return cleaned or None


class RequestIdInterceptor(_AroundInterceptor):
    def __init__(self, service: str):
        self.service = service

    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        given = metadata.get(logs.REQUEST_ID_HEADER)
        request_id = clean_request_id(given, bearer_key(metadata)) or logs.new_request_id()
        token = logs.bind_request_id(request_id)
        info_token = logs.bind_call_info(logs.CallInfo())
        with structlog.contextvars.bound_contextvars(service=self.service, method=method.rsplit("/", 1)[-1][:64]):
            try:
                yield
            finally:
                logs.reset_call_info(info_token)
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
            # The access log: one line per call, carrying the request id and the caller's vendor
            # (not for health probes, which Kubernetes sends every few seconds).
            if not is_open(method):
                info = logs.current_call_info()
                vendor = (info.vendor if info is not None else "") or "anonymous"
                self.metrics.vendor_calls.labels(self.service, self.metrics.vendor_labels(vendor), name, code).inc()
                structlog.get_logger().info("rpc", code=code, seconds=round(elapsed, 4), vendor=vendor)
            elif not method.startswith("/grpc.health."):
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
    """Domain exceptions -> their status; anything else -> ``INTERNAL`` (logged, never shown).

    The status is set on the context and the exception swallowed, rather than raised again as
    ``context.abort``'s ``AbortError``: gRPC keeps that exception with the call's state after the
    call, and through its traceback the failed call's frames, and with them its request (60 MB
    decoded into several hundred MB), would stay in memory."""

    @asynccontextmanager
    async def around(self, method: str, metadata: dict[str, Any], context: Context) -> AsyncIterator[None]:
        log = structlog.get_logger()
        try:
            yield
        except HybridprefError as exc:
            status = status_for(exc)
            assert status is not None
            log.info("rpc_rejected", code=status.code.name, error=str(exc)[:1000])
            _end_call(context, status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # a bug: never leak a traceback to the caller
            log.exception("rpc_internal_error", error=repr(exc)[:1000])
            _end_call(
                context, grpc.StatusCode.INTERNAL, f"internal error (request id {logs.current_request_id()}); see the service log"
            )


def _end_call(context: Context, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
    """End the call with ``code``: the behaviour then returns normally (a unary response is dropped
    when the code is not OK; a response stream ends)."""
    context.set_code(code)
    context.set_details(details)
    if trailing_metadata:
        context.set_trailing_metadata(trailing_metadata)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Calls at once per server and per connection, and the idle limit of request streams
    (``hybridpref.server.admission``); health checks and reflection pass untouched."""

    def __init__(self, admission: Admission, stream_idle_s: float | None):
        self.admission = admission
        self.stream_idle_s = stream_idle_s

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or is_open(handler_call_details.method):
            return handler
        if handler.request_streaming and self.stream_idle_s:
            handler = wrap_request_iterator(handler, lambda messages: idle_limited(messages, self.stream_idle_s))
        return wrap_handler(handler, self.admission.admitted)


def wrap_request_iterator(
    handler: grpc.RpcMethodHandler, wrap: Callable[[AsyncIterator[Any]], AsyncIterator[Any]]
) -> grpc.RpcMethodHandler:
    """A request-streaming ``handler`` whose behaviour reads ``wrap(request_iterator)``."""
    kwargs = _kwargs(handler)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: Context) -> Any:
            return await inner_su(wrap(request_iterator), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for item in inner_ss(wrap(request_iterator), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """API keys, method permissions and per-vendor quotas (see ``hybridpref.server.auth``)."""

    def __init__(self, keys: KeyStore, quotas: QuotaBook | None = None, count_instances: Callable[[Any], int] | None = None):
        self.keys = keys
        self.quotas = quotas or QuotaBook()
        self.count_instances = count_instances or instances_in

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        # The key is checked on the metadata, before a single request byte is read: a refused caller's
        # message (up to the receive limit) is never received into memory nor decoded.
        try:
            policy = self._authorize(method, metadata)
        except Unauthenticated as exc:
            return refusing_handler(handler, exc, "unauthenticated")
        except PermissionDenied as exc:
            known = self.keys.lookup(bearer_key(metadata) or "")
            return refusing_handler(handler, exc, known.vendor if known is not None else "unauthenticated")

        key = bearer_key(metadata)

        def take(message: Any) -> None:
            # Each message of a stream re-checks the key (a dict look-up and one hash while the file is
            # unchanged): a stream opened before its key was revoked stops at its next message.
            current = self.keys.lookup(key or "")
            if current is None or current.vendor != policy.vendor:
                raise Unauthenticated("API key revoked while the call was running")
            self.quotas.take_instances(policy, self.count_instances(message))

        @asynccontextmanager
        async def around(context: Context) -> AsyncIterator[None]:
            info = logs.current_call_info()
            if info is not None:
                info.vendor = policy.vendor
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


def refusing_handler(handler: grpc.RpcMethodHandler, error: Exception, vendor: str = "unauthenticated") -> grpc.RpcMethodHandler:
    """A handler that raises ``error`` without reading any request message.

    gRPC reads (and buffers, up to the receive limit) a unary request before it calls the handler;
    for a request-*streaming* handler it calls at once and reads only when the handler asks. So the
    refusal is served as a request-streaming handler whatever the method's shape (the wire format is
    the same): the call ends before its message is received, and flow control stops the sender."""

    def mark() -> None:  # the access log and the per-vendor counter say who was refused
        info = logs.current_call_info()
        if info is not None:
            info.vendor = vendor

    async def refuse(request_iterator: AsyncIterator[Any], context: Context) -> Any:
        mark()
        raise error

    async def refuse_stream(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        mark()
        raise error
        yield  # a generator: the response-streaming shape

    kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)


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

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
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


def _safe(deserializer: Callable[[bytes], Any], received: list[int] | None = None) -> Callable[[bytes], Any]:
    """``deserializer`` that never raises (an ``_Undecodable`` instead) and adds the bytes it sees to
    ``received[0]``."""

    def deserialize(data: bytes) -> Any:
        if received is not None:
            received[0] += len(data)
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything a corrupt message triggers
            return _Undecodable(exc)

    return deserialize


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Undecodable requests -> ``INVALID_ARGUMENT``; request bytes counted, and memory given back to
    the system after large ones (``hybridpref.server.memory``)."""

    def __init__(self, service: str, metrics: Metrics, memory: MemoryReturner | None = None):
        self.service = service
        self.metrics = metrics
        self.memory = memory if memory is not None else MemoryReturner()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        name = handler_call_details.method.rsplit("/", 1)[-1][:64]

        def check(message: Any) -> None:
            if isinstance(message, _Undecodable):
                self.metrics.undecodable.labels(self.service, name).inc()
                raise InvalidInput(
                    FieldViolation(
                        "request",
                        f"could not decode the request message ({type(message.error).__name__}): "
                        "not a serialized message of this method's request type",
                    )
                )

        memory, received = self.memory, [0]  # this call's request bytes

        @asynccontextmanager
        async def trim_after(context: Context) -> AsyncIterator[None]:
            try:
                yield
            finally:
                memory.call_ended(received[0])

        decoded = wrap_requests(handler, check, deserializer=_safe(handler.request_deserializer, received))
        return wrap_handler(read_on_demand(decoded), trim_after)
