"""Faults on a real stack: a backend stopped during a streaming route, recovery after it
returns, and the denial-of-service request from issue 12.

Outages here last 3 s to keep CI fast; recovery does not depend on the outage length because
the channels' reconnect back-off is capped (``reconnect_backoff_max_s``, 2 s) and the router's
watcher polls every second. ``benchmarks/bench_load.py --outage 60`` measures a 60 s outage.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time

import grpc
import pytest
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.instances import read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"
ROUTER_SERVICE = "hybridpref.v1.RouterService"
OUTAGE_S = 3.0
RECOVERY_LIMIT_S = 5.0


@pytest.fixture(scope="module")
def settings():
    return Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"}, router={"default_strategy": "random"}
    )


@pytest.fixture(scope="module")
def stack(background_loop, settings, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.2))


@pytest.fixture(scope="module")
def sample():
    return instances_to_proto(read_jsonl(str(SAMPLE)))


def config(strategy: str = "random", **extra) -> router_pb2.RouteConfig:
    return router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5), strategy=strategy, **extra)


def router_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=2).status
            )
        except grpc.RpcError:
            return -1


def wait_for(predicate, timeout_s: float, step_s: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` holds, or None if it did not within ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(step_s)
    return None


def route_ok(address: str, sample, strategy: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).RouteInstances(
                router_pb2.RouteInstancesRequest(instances=sample[:6], config=config(strategy)), timeout=5
            )
            return True
        except grpc.RpcError:
            return False


def restart(background_loop, stack, name: str, settings: Settings) -> None:
    from hybridpref.cli.stack import handle_for
    from hybridpref.server.server import start_service

    port = stack.services[name].port
    fresh = background_loop.run(start_service(handle_for(name, settings), settings, port=port, metrics_port=-1), timeout=60)
    background_loop.run(fresh.loaded.wait(), timeout=120)
    stack.services[name] = fresh


# strategy that needs the backend after the chunks: all_lm judges everything; greedy needs the predictor.
# The predictor is not among them: a stream fetches the routing model with its first chunk and routes from
# it in process, so the predictor going away mid-stream no longer fails the stream (readiness still follows the
# predictor: BackendWatcher checks every required backend; the fail-fast test covers a hung backend).
@pytest.mark.parametrize(("backend", "strategy"), [("tagger", "topk"), ("judge", "all_lm")])
def test_backend_stopped_during_a_stream_then_back(background_loop, stack, settings, sample, backend, strategy):
    router = stack.router_address
    assert wait_for(lambda: router_status(router) == health_pb2.HealthCheckResponse.SERVING, 10) is not None
    pending: queue.Queue = queue.Queue()
    pending.put(router_pb2.RouteInstancesStreamRequest(config=config(strategy)))
    pending.put(router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=sample[:10])))

    def messages():
        while (item := pending.get()) is not None:
            yield item

    deadline_s = 20.0
    with grpc.insecure_channel(router) as channel, concurrent.futures.ThreadPoolExecutor(1) as pool:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        future = pool.submit(lambda: list(stub.RouteInstancesStream(messages(), timeout=deadline_s)))
        time.sleep(0.5)  # the first chunk is tagged
        background_loop.run(stack.services[backend].stop(0))
        stopped = time.monotonic()
        pending.put(router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=sample[10:20])))
        pending.put(None)
        with pytest.raises(grpc.RpcError) as err:
            future.result(timeout=deadline_s + 5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert time.monotonic() - stopped < deadline_s
    # Readiness follows: NOT_SERVING while the backend is away.
    assert wait_for(lambda: router_status(router) == health_pb2.HealthCheckResponse.NOT_SERVING, 5) is not None
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    restart(background_loop, stack, backend, settings)
    back = time.monotonic()
    assert wait_for(lambda: route_ok(router, sample, strategy), RECOVERY_LIMIT_S, 0.2) is not None
    assert (
        wait_for(
            lambda: router_status(router) == health_pb2.HealthCheckResponse.SERVING, RECOVERY_LIMIT_S - (time.monotonic() - back)
        )
        is not None
    )
    assert time.monotonic() - back <= RECOVERY_LIMIT_S


def dos_request(sample, candidates: int) -> router_pb2.RouteInstancesRequest:
    return router_pb2.RouteInstancesRequest(
        instances=sample[:8],
        config=router_pb2.RouteConfig(
            budget=common_pb2.Budget(fraction=0.5), strategy="simulated", simulated_candidates=candidates
        ),
    )


def test_dos_request_is_refused(stack, sample):
    """Issue 12's attack: 8 x 8 instances, simulated, 4294967295 candidates, no deadline."""
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        def attack():
            try:
                stub.RouteInstances(dos_request(sample, 4294967295))
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: attack(), range(8)))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 8
    assert time.monotonic() - start < 5


@pytest.fixture()
def open_router(background_loop, stack, tmp_path):
    """A second router over the same backends: candidates effectively unbounded, a 2 s maximum
    deadline, two workers, and API keys (the attacker may run 2 calls at once)."""
    from hybridpref.router.servicer import router_handle
    from hybridpref.server.auth import add_vendor
    from hybridpref.server.server import start_service

    keys = tmp_path / "keys.json"
    attacker, vendor = add_vendor(keys, "attacker", max_concurrent=2), add_vendor(keys, "vendor")
    settings = Settings(
        router={
            "tagger_address": stack.address("tagger"),
            "judge_address": stack.address("judge"),
            "predictor_address": stack.address("predictor"),
            "workers": 3,
            "pool_stall_s": 0.8,
        },
        limits={"max_simulated_candidates": 4294967295},
        server={"max_deadline_s": 2.0},
        auth={"keys_file": str(keys)},
    )
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    yield running, attacker, vendor
    background_loop.run(running.stop(0.2))


def test_dos_request_is_bounded_and_normal_calls_keep_working(open_router, sample):
    router, attacker, vendor = open_router
    as_attacker = (("authorization", f"Bearer {attacker}"),)
    as_vendor = (("authorization", f"Bearer {vendor}"),)
    normal = router_pb2.RouteInstancesRequest(instances=sample[:8], config=config("random"))
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        idle = []
        for _ in range(5):
            t = time.perf_counter()
            stub.RouteInstances(normal, metadata=as_vendor, timeout=10)
            idle.append(time.perf_counter() - t)

        def attack():
            t = time.perf_counter()
            try:
                stub.RouteInstances(dos_request(sample, 4294967295), metadata=as_attacker)  # no deadline
            except grpc.RpcError as exc:
                return exc.code(), time.perf_counter() - t
            return grpc.StatusCode.OK, time.perf_counter() - t

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            attacks = [pool.submit(attack) for _ in range(8)]
            time.sleep(0.3)
            during = []
            for _ in range(5):  # a vendor's normal calls while the attack runs
                t = time.perf_counter()
                stub.RouteInstances(normal, metadata=as_vendor, timeout=10)
                during.append(time.perf_counter() - t)
            results = [f.result(timeout=30) for f in attacks]
    codes = sorted(c.name for c, _ in results)
    # Two run (the attacker's concurrency quota) and are stopped at the server's 2 s maximum deadline;
    # the other six are refused at once.
    assert codes == ["DEADLINE_EXCEEDED"] * 2 + ["RESOURCE_EXHAUSTED"] * 6, codes
    assert max(s for c, s in results if c == grpc.StatusCode.DEADLINE_EXCEEDED) < 4.0
    assert max(during) < max(1.0, 10 * max(idle)), (idle, during)
    # Their work stopped with them (cancellation reached the worker threads): the pool is free at once.
    probe = router.handle  # readiness includes the worker-pool probe
    assert wait_for(lambda: probe.ready(), 3) is not None
    t = time.perf_counter()
    with grpc.insecure_channel(router.address) as channel:
        router_pb2_grpc.RouterServiceStub(channel).RouteInstances(normal, metadata=as_vendor, timeout=10)
    assert time.perf_counter() - t < max(1.0, 10 * max(idle))


def test_stuck_worker_pool_turns_readiness_off(open_router):
    router, _, _ = open_router
    executor = router.handle  # the router's pool is reachable through its readiness watcher
    core_executor = _router_executor(router)
    release = threading.Event()
    futures = [core_executor.submit(lambda: release.wait(30)) for _ in range(3)]  # every worker blocked
    try:
        seen = []
        assert (
            wait_for(
                lambda: seen.append(router_status(router.address)) or seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, 5
            )
            is not None
        ), seen
    finally:
        release.set()
    concurrent.futures.wait(futures, timeout=5)
    assert wait_for(lambda: router_status(router.address) == health_pb2.HealthCheckResponse.SERVING, 5) is not None
    assert executor.ready()


def _router_executor(router):
    """The router's CoreExecutor, found through the watcher bound to its readiness."""
    return router.handle.ready.__self__.executor


def test_required_backends_are_configurable(stack):
    from hybridpref.router.readiness import BackendWatcher
    from hybridpref.server.executors import CoreExecutor
    from hybridpref.server.metrics import Metrics

    settings = Settings(router={"required_backends": "tagger, judge", "predictor_address": "127.0.0.1:1"})
    watcher = BackendWatcher(settings, CoreExecutor("t"), Metrics.default())
    assert set(watcher.addresses) == {"tagger", "judge"}


# ---------------------------------------------------------------- a hung backend (issue 18 item 9, hostile test O5)


@pytest.fixture()
def judge_process():
    """A judge in its own process, so that it can be frozen with SIGSTOP (a hung backend: its
    connections stay open, nothing answers)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from hybridpref.cli.stack import wait_serving

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HYBRIDPREF_JUDGE_BACKEND="replay", HYBRIDPREF_JUDGE_REPLAY_KEY="gpt4", HYBRIDPREF_LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridpref.cli.main", "serve", "judge", "--port", str(port), "--metrics-port", "-1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_serving(f"127.0.0.1:{port}", 60, "hybridpref.v1.JudgeService")
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)


def test_calls_fail_fast_while_a_backend_is_hung(background_loop, stack, sample, judge_process):
    """SIGSTOP the judge: readiness noticed in ~1.3 s but every call waited its full deadline. Now a call
    in flight ends UNAVAILABLE within a few check intervals, new ones at once (with RetryInfo), and
    routing works again right after SIGCONT."""
    import os
    import signal

    from hybridpref.router.servicer import router_handle
    from hybridpref.server.server import start_service
    from hybridpref_client.core.grpc_errors import retry_delay_s

    proc, judge = judge_process
    settings = Settings(
        router={
            "tagger_address": stack.address("tagger"),
            "judge_address": judge,
            "predictor_address": stack.address("predictor"),
            "backend_check_s": 0.5,
            "fail_fast_after_s": 1.0,
        }
    )
    router = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(router.loaded.wait())
    request = router_pb2.RouteInstancesRequest(instances=sample[:6], config=config("all_lm"))
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)

            def call(timeout: float = 10.0) -> tuple[grpc.StatusCode, float, grpc.RpcError | None]:
                start = time.monotonic()
                try:
                    stub.RouteInstances(request, timeout=timeout)
                    return grpc.StatusCode.OK, time.monotonic() - start, None
                except grpc.RpcError as exc:
                    return exc.code(), time.monotonic() - start, exc

            assert wait_for(lambda: call()[0] == grpc.StatusCode.OK, 10) is not None
            os.kill(proc.pid, signal.SIGSTOP)
            code, seconds, _ = call()  # sent to the frozen judge: it waits until the judge is known down
            assert code == grpc.StatusCode.UNAVAILABLE and seconds < 4.0, (code, seconds)
            for _ in range(3):  # the judge is known down: refused at once
                code, seconds, error = call()
                assert code == grpc.StatusCode.UNAVAILABLE and seconds < 1.0, (code, seconds)
                assert "judge is down" in error.details() and retry_delay_s(error)
            os.kill(proc.pid, signal.SIGCONT)
            assert wait_for(lambda: call()[0] == grpc.StatusCode.OK, RECOVERY_LIMIT_S) is not None
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        background_loop.run(router.stop(0.2))
