"""Starting the four services together.

* ``start_embedded_stack``: all four in this process and event loop, on ephemeral
  loopback ports (tests, ``hybridpref route`` without ``--router``). Still real gRPC
  between them.
* ``run_up``: each service its own process (``hybridpref serve <name>``), as in
  production; waits until all are SERVING, stops all cleanly on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.server.metrics import Metrics
from hybridpref.server.server import RunningService, ServiceHandle, start_service
from hybridpref.server.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, Settings

SERVICES = ("tagger", "judge", "predictor", "router")
BACKENDS = ("tagger", "judge", "predictor")


def handle_for(name: str, settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    """The ServiceHandle of a service by name (imports only that service)."""
    if name == "tagger":
        from hybridpref.tagger.servicer import tagger_handle as factory
    elif name == "judge":
        from hybridpref.judge.servicer import judge_handle as factory
    elif name == "predictor":
        from hybridpref.predictor.servicer import predictor_handle as factory
    elif name == "router":
        from hybridpref.router.servicer import router_handle as factory
    else:
        raise ValueError(f"unknown service {name!r}; expected one of {SERVICES}")
    return factory(settings, metrics)


@dataclass
class EmbeddedStack:
    services: dict[str, RunningService]

    @property
    def router_address(self) -> str:
        return self.services["router"].address

    def address(self, name: str) -> str:
        return self.services[name].address

    async def stop(self, grace_s: float = 1.0) -> None:
        # Router first, so nothing calls a backend that is already gone.
        await self.services["router"].stop(grace_s)
        await asyncio.gather(*(self.services[n].stop(grace_s) for n in BACKENDS))


async def start_embedded_stack(settings: Settings, *, metrics: bool = False, wait: bool = True) -> EmbeddedStack:
    """All four services in-process on ephemeral ports; waits for models unless ``wait=False``."""
    metrics_port = 0 if metrics else -1
    running: dict[str, RunningService] = {}
    # Vendors' API keys guard the router; the backends answer only the router (mTLS in production).
    backend_settings = settings.replace(auth={"keys_file": None})
    for name in BACKENDS:
        running[name] = await start_service(
            handle_for(name, backend_settings), backend_settings, port=0, metrics_port=metrics_port
        )
    router_settings = settings.replace(router={f"{n}_address": running[n].address for n in BACKENDS})
    running["router"] = await start_service(
        handle_for("router", router_settings), router_settings, port=0, metrics_port=metrics_port
    )
    stack = EmbeddedStack(running)
    if wait:
        await asyncio.gather(*(r.loaded.wait() for r in running.values()))
        failed = {n: r.load_error for n, r in running.items() if r.load_error is not None}
        if failed:
            await stack.stop()
            raise RuntimeError(f"services failed to load: {failed}")
    return stack


def wait_serving(address: str, timeout_s: float, service: str = "", credentials: grpc.ChannelCredentials | None = None) -> bool:
    """Poll grpc.health.v1 until ``service`` is SERVING at ``address`` (over TLS with ``credentials``)."""
    deadline = time.monotonic() + timeout_s
    opened = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    return False


def up_ports(port_base: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """gRPC and metrics ports for ``up``: the defaults, or ``port_base`` + 0..3 and + 100..103."""
    if port_base is None:
        return dict(DEFAULT_PORTS), dict(DEFAULT_METRICS_PORTS)
    offsets = {"router": 0, "tagger": 1, "judge": 2, "predictor": 3}
    return {n: port_base + o for n, o in offsets.items()}, {n: port_base + 100 + o for n, o in offsets.items()}


def run_up(
    settings: Settings,
    *,
    timeout_s: float = 600.0,
    on_ready: Callable[[dict[str, str]], None] | None = None,
    stop_after_ready: bool = False,
    port_base: int | None = None,
) -> int:
    """Start each service as its own process, wait for all SERVING, then wait for a signal.

    Returns the exit code. ``stop_after_ready`` stops right after all are SERVING
    (used by the benchmark that times start-up).
    """
    from hybridpref.server.tls import channel_credentials

    credentials = channel_credentials(settings)  # the TLS the services' ports speak, if any
    ports, metrics_ports = up_ports(port_base)
    addresses = {n: f"127.0.0.1:{ports[n]}" for n in SERVICES}
    env = dict(os.environ)
    env.update({f"HYBRIDPREF_{n.upper()}_ADDRESS": addresses[n] for n in BACKENDS})
    procs: dict[str, subprocess.Popen] = {}
    for name in SERVICES:
        cmd = [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "serve",
            name,
            "--port",
            str(ports[name]),
            "--metrics-port",
            str(metrics_ports[name]),
        ]
        procs[name] = subprocess.Popen(cmd, env=env)
    stop_requested = False

    def request_stop(*_):
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + timeout_s
        for name in SERVICES:
            while not wait_serving(addresses[name], 1.0, credentials=credentials):
                if stop_requested or time.monotonic() > deadline or procs[name].poll() is not None:
                    print(f"hybridpref up: {name} did not become SERVING", file=sys.stderr)
                    return 1
        if on_ready:
            on_ready(addresses)
        while not stop_requested and not stop_after_ready:
            if any(p.poll() is not None for p in procs.values()):
                print("hybridpref up: a service exited; stopping the others", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=settings.server.grace_period_s + 10)
            except subprocess.TimeoutExpired:
                p.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BackgroundLoop:
    """An event loop in a daemon thread, for running services beside blocking code
    (the CLI's embedded stack, tests that use the blocking client)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hybridpref-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
