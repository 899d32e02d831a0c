"""The one server bootstrap shared by all four services (grpc.aio).

Every service gets: standard health checking (overall ``""`` SERVING once its
models are loaded; its own service name SERVING only while it can answer), server
reflection, Prometheus metrics on an HTTP ``/metrics`` port, structlog JSON logs
with request ids, explicit message-size limits, TLS (and mutual TLS) when configured,
a cap on concurrent RPCs, API keys and quotas when a keys file is configured, a maximum
call deadline, and graceful shutdown on SIGTERM (health goes NOT_SERVING, in-flight
calls get the grace period to finish).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hybridpref.server.admission import Admission
from hybridpref.server.interceptors import (
    AccessInterceptor,
    AdmissionInterceptor,
    DeadlineInterceptor,
    DecodeInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    RequestIdInterceptor,
)
from hybridpref.server.metrics import Metrics, start_metrics_server
from hybridpref.server.quota import QuotaBook
from hybridpref.server.runtime import settle_heap
from hybridpref.server.settings import Settings
from hybridpref.server.tls import server_credentials

log = structlog.get_logger()


@dataclass
class ServiceHandle:
    """What a service contributes to the bootstrap.

    ``load`` is blocking (model loading) and runs in a thread after the server
    starts; ``ready`` says whether the service can answer its RPCs now (the
    predictor without a bundle cannot); ``close`` releases resources at shutdown.
    """

    name: str
    service_names: tuple[str, ...]
    register: Callable[[grpc.aio.Server], None]
    load: Callable[[], None]
    ready: Callable[[], bool] = lambda: True
    close: Callable[[], Awaitable[None]] | None = None
    # Lets a service refresh its health later (e.g. the predictor after a bundle reload).
    on_health_change: list[Callable[[], None]] = field(default_factory=list)
    # Started in the server's event loop once loading is done (e.g. the router's backend watcher).
    start: Callable[[], Awaitable[None]] | None = None


def build_interceptors(service: str, metrics: Metrics, settings: Settings | None = None) -> list[grpc.aio.ServerInterceptor]:
    """Interceptor order, outermost first (see ``hybridpref.server.interceptors``):
    request id -> metrics + access log -> error mapping -> admission (calls at once per server and
    connection, idle streams) -> API key + quotas (when a keys file is configured) -> call deadline
    -> request decoding (which serves every method request-streaming, so all of the above run
    before a request byte is read)."""
    settings = settings or Settings()
    server = settings.server
    chain: list[grpc.aio.ServerInterceptor] = [
        RequestIdInterceptor(service),
        MetricsInterceptor(service, metrics),
        ErrorInterceptor(),
        AdmissionInterceptor(
            Admission(server.max_concurrent_rpcs, server.max_calls_per_connection), server.stream_idle_s or None
        ),
    ]
    if settings.auth.keys_file:
        from hybridpref.server.auth import KeyStore

        chain.append(
            AccessInterceptor(
                KeyStore(settings.auth.keys_file, settings.auth.keys_reload_s),
                QuotaBook(default_max_concurrent=settings.auth.vendor_max_concurrent),
            )
        )
    elif service == "router":
        log.warning(
            "auth_disabled",
            service=service,
            detail="no HYBRIDPREF_API_KEYS_FILE: every caller is trusted; set one before exposing the router",
        )
    chain += [DeadlineInterceptor(settings.server.max_deadline_s or None), DecodeInterceptor(service, metrics)]
    return chain


@dataclass
class RunningService:
    handle: ServiceHandle
    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    health: health.aio.HealthServicer
    loaded: asyncio.Event
    load_error: BaseException | None = None
    _load_task: asyncio.Task[None] | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    tls: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def refresh_health(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.handle.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.handle.service_names:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Graceful stop: NOT_SERVING first (load balancers drain), then finish in-flight calls."""
        await self.health.enter_graceful_shutdown()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.handle.close is not None:
            await self.handle.close()
        log.info("service_stopped", service=self.handle.name)


async def start_service(
    handle: ServiceHandle,
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
) -> RunningService:
    """Start ``handle``'s server; returns at once with health NOT_SERVING while models load.

    ``port``/``metrics_port`` override the settings (0 = ephemeral, -1 = no metrics).
    Await ``running.loaded`` to wait for the models.
    """
    metrics = metrics or Metrics.default()
    credentials = server_credentials(settings)
    server = grpc.aio.server(
        interceptors=build_interceptors(handle.name, metrics, settings),
        options=settings.server_options(),
        # No gRPC-wide cap: it would count health checks too and refuse without RetryInfo. The
        # AdmissionInterceptor caps calls per server, connection and vendor, health exempt.
        maximum_concurrent_rpcs=None,
    )
    handle.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*handle.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    want_port = settings.server.port_for(handle.name) if port is None else port
    address = f"{settings.server.host}:{want_port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {settings.server.host}:{want_port} for {handle.name}")
    health_server, health_port = None, None
    if credentials is not None and settings.server.health_port is not None and settings.server.health_port >= 0:
        # The kubelet's gRPC probes speak plaintext only: serve health alone on its own port.
        health_server = grpc.aio.server(options=settings.grpc_options(), maximum_concurrent_rpcs=32)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(f"{settings.server.host}:{settings.server.health_port}")
        await health_server.start()
    await server.start()
    for name in ("", *handle.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    m_port = settings.server.metrics_port_for(handle.name) if metrics_port is None else metrics_port
    m_host = settings.server.metrics_host or settings.server.host
    bound_metrics = start_metrics_server(m_port, m_host, metrics.registry) if m_port >= 0 else None
    metrics.model_ready.labels(handle.name).set(0)  # exported from the start, so "never loaded" is visible
    running = RunningService(
        handle,
        server,
        bound,
        bound_metrics,
        health_servicer,
        asyncio.Event(),
        health_server=health_server,
        health_port=health_port,
        tls=credentials is not None,
    )
    running._load_task = asyncio.create_task(_load(running, metrics))
    log.info(
        "service_started",
        service=handle.name,
        port=bound,
        metrics_port=bound_metrics,
        tls=credentials is not None,
        mutual_tls=bool(settings.tls.client_ca_file),
        health_port=health_port,
    )
    return running


async def _load(running: RunningService, metrics: Metrics) -> None:
    handle = running.handle
    try:
        await asyncio.to_thread(handle.load)
    except Exception as exc:  # stay NOT_SERVING; the log says why
        running.load_error = exc
        log.exception("model_load_failed", service=handle.name, error=repr(exc))
        running.loaded.set()
        return
    loop = asyncio.get_running_loop()

    async def refresh() -> None:
        await running.refresh_health()
        metrics.model_ready.labels(handle.name).set(1 if handle.ready() else 0)

    def on_change() -> None:  # may be called from any thread (e.g. the bundle watcher's)
        settle_heap()  # a model was replaced: let the old one's cycles go, keep the new one out of sight
        asyncio.run_coroutine_threadsafe(refresh(), loop)

    handle.on_health_change.append(on_change)
    await running.health.set("", health_pb2.HealthCheckResponse.SERVING)
    await refresh()
    if handle.start is not None:
        await handle.start()
    settle_heap()
    running.loaded.set()
    log.info("service_serving", service=handle.name, ready=handle.ready())


async def serve_until_signal(handles: Sequence[ServiceHandle], settings: Settings) -> None:
    """Run services until SIGTERM/SIGINT, then stop them gracefully (``hybridpref serve``)."""
    running = [await start_service(h, settings) for h in handles]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown_requested", grace_period_s=settings.server.grace_period_s)
    await asyncio.gather(*(r.stop(settings.server.grace_period_s) for r in running))
