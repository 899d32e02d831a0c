"""Server interceptors, one per cross-cutting concern.

Order (outermost first), fixed in ``hybridpref.common.server.build_interceptors``:

1. ``RequestIdInterceptor`` binds the request id (``x-request-id`` metadata, or a new
   one) and the service name to the logging context, so every log line of the call,
   and every downstream call, carries it;
2. ``MetricsInterceptor`` counts requests by final status code, times them, tracks
   in-flight calls and writes the one access-log line per call; it sees the code set
   by the error mapper below it;
3. ``ErrorInterceptor`` maps domain exceptions (``hybridpref.common.errors``) to
   statuses with rich details, and unexpected ones to ``INTERNAL`` after logging them.

Each concern is an async context manager around the handler's behaviour; ``wrap_handler``
applies it to all four RPC shapes (unary/stream x unary/stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import grpc
import structlog

from hybridpref.common import logs
from hybridpref.common.errors import HybridPrefError
from hybridpref.common.grpc_errors import status_for
from hybridpref.common.metrics import Metrics

Enter = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


def wrap_handler(handler: grpc.RpcMethodHandler, enter: Enter) -> grpc.RpcMethodHandler:
    """Return ``handler`` with its behaviour run inside ``enter(context)``."""
    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request, context):
            async with enter(context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator, context):
            async with enter(context):
                return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_stream = handler.unary_stream or handler.stream_stream
    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

    async def streaming(request_or_iterator, context) -> AsyncIterator:
        async with enter(context):
            async for item in inner_stream(request_or_iterator, context):
                yield item

    return factory(streaming, **kwargs)


class _AroundInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        return wrap_handler(handler, lambda context: self.around(method, metadata, context))

    def around(self, method: str, metadata: dict, context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError


class RequestIdInterceptor(_AroundInterceptor):
    def __init__(self, service: str):
        self.service = service

    @asynccontextmanager
    async def around(self, method, metadata, context):
        request_id = metadata.get(logs.REQUEST_ID_HEADER) or logs.new_request_id()
        token = logs.bind_request_id(request_id)
        with structlog.contextvars.bound_contextvars(service=self.service, method=method.rsplit("/", 1)[-1]):
            try:
                yield
            finally:
                logs.reset_request_id(token)


class MetricsInterceptor(_AroundInterceptor):
    def __init__(self, service: str, metrics: Metrics):
        self.service = service
        self.metrics = metrics

    @asynccontextmanager
    async def around(self, method, metadata, context):
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


def _code_name(context) -> str | None:
    try:
        code = context.code()
    except Exception:  # older grpc: no code() on aio contexts
        return None
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


class ErrorInterceptor(_AroundInterceptor):
    @asynccontextmanager
    async def around(self, method, metadata, context):
        log = structlog.get_logger()
        try:
            yield
        except HybridPrefError as exc:
            status = status_for(exc)
            assert status is not None
            log.info("rpc_rejected", code=status.code.name, error=str(exc))
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # a bug: never leak a traceback to the caller
            log.exception("rpc_internal_error", error=repr(exc))
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {logs.current_request_id()}); see the service log",
            )
