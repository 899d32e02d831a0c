"""The router's readiness: SERVING only while it can route.

A background watcher asks each backend's ``grpc.health.v1`` for its own service name every
``backend_check_s`` seconds (on channels with the same TLS, keepalive and short reconnect
back-off as the routing channels) and checks that the router's worker pool still picks up
work. The router's own service name in its health service follows: ``NOT_SERVING`` while a
required backend is down or the pool is stuck, ``SERVING`` again within one check interval
plus the reconnect back-off (about 3 s with the defaults) of the backend's return, whatever
the outage length. The server-wide ``""`` status stays SERVING while the process is up
(liveness).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.server.channels import open_channel
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.metrics import Metrics
from hybridpref.server.settings import Settings

BACKEND_SERVICES = {
    "tagger": "hybridpref.v1.TaggerService",
    "judge": "hybridpref.v1.JudgeService",
    "predictor": "hybridpref.v1.PredictorService",
}

# Failed health checks in a row (at least) after which a backend may count as known down; it also must
# have failed for ``settings.router.fail_fast_after_s`` (a busy backend can miss one or two checks).
FAIL_FAST_AFTER = 2

log = structlog.get_logger()


class BackendWatcher:
    def __init__(
        self,
        settings: Settings,
        executor: CoreExecutor,
        metrics: Metrics,
        on_change: Callable[[], object] = lambda: None,
        backends: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.on_change = on_change
        required = [n.strip() for n in settings.router.required_backends.split(",") if n.strip() in BACKEND_SERVICES]
        self.addresses = backends or {name: getattr(settings.router, f"{name}_address") for name in required}
        self.up: dict[str, bool] = {name: False for name in self.addresses}
        # Fail fast: after FAIL_FAST_AFTER failed checks in a row a backend is "known down" (its event
        # set): calls to it are refused at once, and calls waiting on it are ended, instead of waiting
        # for their deadline on a hung backend. One failed check only turns readiness off.
        self.failures: dict[str, int] = {name: 0 for name in self.addresses}
        self.down_since: dict[str, float] = {}
        self.failing_since: dict[str, float] = {}  # first failed check of the current run of failures
        self._down_events: dict[str, asyncio.Event] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._probe_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_ready: bool | None = None

    def ready(self) -> bool:
        return all(self.up.values()) and self.pool_ok()

    def pool_ok(self) -> bool:
        return self._probe_since is None or time.monotonic() - self._probe_since < self.settings.router.pool_stall_s

    async def start(self) -> None:
        """One check round now (so health is right from the start), then keep watching."""
        await self.check_once()
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._watch_pool())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()

    async def check_once(self) -> None:
        results = await asyncio.gather(*(self._serving(name) for name in self.addresses))
        for name, ok in zip(self.addresses, results):
            if ok != self.up[name]:
                log.warning("backend_up" if ok else "backend_down", backend=name, address=self.addresses[name])
            self.up[name] = ok
            self.failures[name] = 0 if ok else self.failures[name] + 1
            event = self.down_event(name)
            now = time.monotonic()
            if ok:
                self.down_since.pop(name, None)
                self.failing_since.pop(name, None)
                event.clear()
            else:
                since = self.failing_since.setdefault(name, now)
                long_enough = now - since >= self.settings.router.fail_fast_after_s
                if self.failures[name] >= FAIL_FAST_AFTER and long_enough and not event.is_set():
                    self.down_since[name] = now
                    event.set()
            self.metrics.backend_ready.labels(name).set(1 if ok else 0)
        self._notify()

    def down_event(self, name: str) -> asyncio.Event:
        """Set while ``name`` is known down (see ``FAIL_FAST_AFTER``)."""
        event = self._down_events.get(name)
        if event is None:
            event = self._down_events[name] = asyncio.Event()
        return event

    def known_down(self, name: str) -> str | None:
        """Why calls to ``name`` should fail fast now, or ``None`` (not watched, or not known down)."""
        if name not in self.addresses or name not in self.down_since:
            return None
        failing = time.monotonic() - self.failing_since.get(name, self.down_since[name])
        return f"{name} is down (its health checks have failed for about {failing:.1f} s)"

    @property
    def retry_after_s(self) -> float:
        """When a retry may find a known-down backend back: one check interval."""
        return self.settings.router.backend_check_s

    async def _serving(self, name: str) -> bool:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = open_channel(self.addresses[name], self.settings)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=BACKEND_SERVICES.get(name, "")),
                timeout=max(0.2, min(1.0, self.settings.router.backend_check_s)),
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _notify(self) -> None:
        ready = self.ready()
        if ready != self._last_ready:
            self._last_ready = ready
            if ready is False:
                down = [n for n, ok in self.up.items() if not ok] or ["worker pool"]
                log.warning("router_not_ready", waiting_for=down)
            self.on_change()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.router.backend_check_s)
            try:
                await self.check_once()
            except Exception as exc:  # never let the watcher die
                log.error("backend_watch_failed", error=repr(exc)[:300])

    async def _watch_pool(self) -> None:
        """Time a no-op through the worker pool; while it waits, ``pool_ok`` ages out."""
        while True:
            await asyncio.sleep(self.settings.router.backend_check_s)
            self._probe_since = time.monotonic()
            waiter = asyncio.ensure_future(self.executor.run(lambda: None))
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=self.settings.router.backend_check_s)
                self._notify()
            self._probe_since = None
            self._notify()
