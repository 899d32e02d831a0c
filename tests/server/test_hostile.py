"""The hostile test's failures (reviews/hostile-test-2026-12-06.md F1-F4, issue 18 items 4-7) as CI
cases against real gRPC servers on loopback: one caller must not hurt the others.

* F2 (item 6): a million-instance request is refused on its count, before any conversion;
* F1 (item 7): 10,000 bad rows come back as INVALID_ARGUMENT naming rows, within gRPC's metadata limit;
* F3 (item 4): idle streams and one greedy caller cannot lock out other vendors or the health check;
* F4 (item 5): unauthenticated large messages are refused before decoding (RSS of a real server process).

Counts of each case are in benchmarks/RESULTS.md ("Hostile cases in CI").
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc

ROUTE = "/hybridpref.v1.RouterService/RouteInstances"
STREAM = "/hybridpref.v1.RouterService/RouteInstancesStream"


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"}, router={"default_strategy": "random"}
    )
    running = background_loop.run(start_embedded_stack(settings, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (``payload`` shorter than 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def many_instances_body(n: int) -> bytes:
    """A serialized ``RouteInstancesRequest`` with ``n`` tiny instances (14 bytes each), built as bytes:
    a million cost 50 ms here instead of seconds of proto building."""
    inst = common_pb2.PreferenceInstance(id="x", prompt="p", response_a="a", response_b="b").SerializeToString()
    config = router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25)).SerializeToString()
    return _field(1, inst) * n + _field(2, config)


def raw_unary(channel: grpc.Channel, method: str = ROUTE):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def _code_and_seconds(call) -> tuple[grpc.StatusCode, float, str]:
    start = time.perf_counter()
    try:
        call()
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    return code, time.perf_counter() - start, details


# ------------------------------------------------------------------ F2 / item 6: count before converting


def test_a_million_instances_are_refused_on_their_count(stack):
    """Three concurrent 1,000,000-instance unary requests (14 MB each): before the fix each took 11-20 s
    of router CPU (every instance converted and validated first); now they are refused on the count."""
    body = many_instances_body(1_000_000)
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(stack.router_address, options=options) as channel:
        call = raw_unary(channel)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: _code_and_seconds(lambda: call(body, timeout=60)), range(3)))
    for code, seconds, details in results:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "1000000" in details and "20000" in details
        assert seconds < 6.0, results  # decoding 14 MB only; conversion took 11-20 s each


def test_a_million_instance_stream_chunk_is_refused_on_its_count(stack):
    inst = common_pb2.PreferenceInstance(id="x", prompt="p", response_a="a", response_b="b").SerializeToString()
    big = router_pb2.InstanceChunk.FromString(_field(1, inst) * 1_000_000)
    config = router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25))

    def messages():
        yield router_pb2.RouteInstancesStreamRequest(config=config)
        yield router_pb2.RouteInstancesStreamRequest(chunk=big)

    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(stack.router_address, options=options) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        code, seconds, details = _code_and_seconds(lambda: list(stub.RouteInstancesStream(messages(), timeout=60)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "a chunk of 1000000" in details and seconds < 6.0


# ------------------------------------------------------------------ F1 / item 7: many bad rows fit the metadata limit


@pytest.mark.parametrize("n", [400, 10_000, 20_000])
def test_many_bad_rows_are_invalid_argument_within_the_metadata_limit(stack, n):
    """Past ~360 bad rows the violations overflowed gRPC's 16 KiB metadata limit and a plain gRPC client
    got RESOURCE_EXHAUSTED with no row named. Now: INVALID_ARGUMENT, the first rows named in order, the
    total in an ErrorInfo, and the whole status under gRPC's 8 KiB soft limit."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from hybridpref_client.core.grpc_errors import TRUNCATED_REASON, field_violations

    rows = [
        common_pb2.PreferenceInstance(id=f"r{i}", prompt="What is 2+2?", response_a=" ", response_b="4", lm_labels={"gpt4": 2})
        for i in range(n)
    ]
    request = router_pb2.RouteInstancesRequest(
        instances=rows, config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25), strategy="random")
    )
    with grpc.insecure_channel(stack.router_address) as channel:  # gRPC's default client limits
        with pytest.raises(grpc.RpcError) as info:
            router_pb2_grpc.RouterServiceStub(channel).RouteInstances(request, timeout=60)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    listed = field_violations(error)
    assert [v.field for v in listed[:3]] == ["instances[0].response_a", "instances[1].response_a", "instances[2].response_a"]
    assert 1 <= len(listed) <= 50
    status = rpc_status.from_call(error)
    trailer = sum(len(k) + len(v) for k, v in error.trailing_metadata())
    assert trailer < 8192, trailer
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    unpacked = error_details_pb2.ErrorInfo()
    infos[0].Unpack(unpacked)
    assert unpacked.reason == TRUNCATED_REASON and unpacked.metadata["total"] == str(n)


# ------------------------------------------------------------------ F4 / item 5: refuse before decoding


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Peak resident memory of a process while the ``with`` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self._stop = pid, _rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def router_process(tmp_path_factory):
    """A real ``hybridpref serve router`` process with API keys and no backends (calls that pass the
    key check end UNAVAILABLE at the tagger, after their request was decoded and converted)."""
    import os
    import subprocess
    import sys

    from hybridpref.cli.stack import wait_serving
    from hybridpref.server.auth import add_vendor

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to read a process' resident memory")
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    key = add_vendor(keys, "acme")
    port, dead = _free_port(), _free_port()
    env = dict(
        os.environ,
        HYBRIDPREF_API_KEYS_FILE=str(keys),
        HYBRIDPREF_LOG_LEVEL="WARNING",
        HYBRIDPREF_TAGGER_ADDRESS=f"127.0.0.1:{dead}",
        HYBRIDPREF_JUDGE_ADDRESS=f"127.0.0.1:{dead}",
        HYBRIDPREF_PREDICTOR_ADDRESS=f"127.0.0.1:{dead}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridpref.cli.main", "serve", "router", "--port", str(port), "--metrics-port", "-1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", 60)  # "" is SERVING once started, whatever the backends
        yield proc, f"127.0.0.1:{port}", key
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sixty_mb_request() -> bytes:
    big = common_pb2.PreferenceInstance(prompt="p" * 200_000, response_a="a" * 200_000, response_b="b" * 200_000)
    request = router_pb2.RouteInstancesRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25)))
    for i in range(100):
        request.instances.add().CopyFrom(big)
        request.instances[-1].id = f"i{i}"
    return request.SerializeToString()


def _attack(address: str, body: bytes, n: int, metadata=()) -> list[grpc.StatusCode]:
    options = [("grpc.max_send_message_length", 128 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = raw_unary(channel)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            return [
                c
                for c, _, _ in pool.map(lambda _: _code_and_seconds(lambda: call(body, timeout=120, metadata=metadata)), range(n))
            ]


def test_unauthenticated_large_messages_are_refused_before_decoding(router_process):
    """8 concurrent unauthenticated 60 MB requests (and 8 with a wrong key): before the fix the router
    grew by ~750 MB (138 -> 773 MB in the hostile test); now no message is even received."""
    proc, address, _ = router_process
    body = sixty_mb_request()
    before = _rss_mb(proc.pid)
    with RssSampler(proc.pid) as rss:
        start = time.perf_counter()
        codes = _attack(address, body, 8) + _attack(address, body, 8, (("authorization", "Bearer hpk_wrong"),))
        seconds = time.perf_counter() - start
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 16
    assert rss.peak - before < 120, (before, rss.peak)
    assert seconds < 10


def test_memory_is_given_back_after_large_authenticated_requests(router_process):
    """4 concurrent authenticated 60 MB requests are decoded and converted (then fail at the absent
    tagger); afterwards the router gives the memory back instead of holding its peak."""
    proc, address, key = router_process
    body = sixty_mb_request()
    before = _rss_mb(proc.pid)
    with RssSampler(proc.pid) as rss:
        codes = _attack(address, body, 4, (("authorization", f"Bearer {key}"),))
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 4
    grown = rss.peak - before
    assert grown > 400, (before, rss.peak)  # the requests really were decoded: there was memory to give back
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _rss_mb(proc.pid) - before > 0.2 * grown:
        time.sleep(0.1)
    assert _rss_mb(proc.pid) - before <= 0.2 * grown, (before, rss.peak, _rss_mb(proc.pid))


# ------------------------------------------------------------------ F3 / item 4: one caller cannot take the server

IDLE_S = 3.0


@pytest.fixture(scope="module")
def guarded_router(background_loop, stack, tmp_path_factory):
    """A router over the stack's backends with small limits (24 calls at once, 8 per connection, 4 per
    vendor by default, streams closed after 3 s of silence) and API keys: ``greedy`` may run 1,000 calls
    at once, ``nolimit`` sets no ``max_concurrent`` (the default applies), ``beta`` is an innocent vendor."""
    from hybridpref.router.servicer import router_handle
    from hybridpref.server.auth import add_vendor
    from hybridpref.server.server import start_service

    keys = tmp_path_factory.mktemp("guarded") / "keys.json"
    vendors = {
        "greedy": add_vendor(keys, "greedy", max_concurrent=1000),
        "nolimit": add_vendor(keys, "nolimit"),
        "beta": add_vendor(keys, "beta"),
    }
    settings = Settings(
        router={
            "tagger_address": stack.address("tagger"),
            "judge_address": stack.address("judge"),
            "predictor_address": stack.address("predictor"),
            "default_strategy": "random",
        },
        server={"max_concurrent_rpcs": 24, "max_calls_per_connection": 8, "stream_idle_s": IDLE_S},
        auth={"keys_file": str(keys), "vendor_max_concurrent": 4},
    )
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    yield running, vendors
    background_loop.run(running.stop(0.2))


def _bearer(key: str):
    return (("authorization", f"Bearer {key}"),)


class IdleStreams:
    """``n`` RouteInstancesStream calls spread over ``channels`` connections, each sending its config and
    then nothing until released (the hostile test's silent streams)."""

    def __init__(self, address: str, key: str, n: int, channels: int):
        import threading

        self.release = threading.Event()
        self.channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)]
        config = router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25))

        def messages():
            yield router_pb2.RouteInstancesStreamRequest(config=config)
            self.release.wait(60)

        self.calls = [
            router_pb2_grpc.RouterServiceStub(self.channels[k % channels]).RouteInstancesStream(messages(), metadata=_bearer(key))
            for k in range(n)
        ]

    def refused(self) -> list[grpc.RpcError]:
        return [c for c in self.calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]

    def open(self) -> int:
        return sum(not c.done() for c in self.calls)

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


def _health(address: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _beta_call(address: str, key: str) -> grpc.StatusCode:
    rows = [
        common_pb2.PreferenceInstance(
            id=f"b{i}", prompt="What is 2+2?", response_a="4", response_b="Four.", lm_labels={"gpt4": 2}
        )
        for i in range(4)
    ]
    request = router_pb2.RouteInstancesRequest(
        instances=rows, config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5), strategy="random")
    )
    with grpc.insecure_channel(address) as channel:
        code, _, _ = _code_and_seconds(
            lambda: router_pb2_grpc.RouterServiceStub(channel).RouteInstances(request, timeout=20, metadata=_bearer(key))
        )
    return code


def _settle(streams: IdleStreams, expected_open: int, timeout_s: float = 5.0) -> None:
    """Wait until all but ``expected_open`` calls were refused, then check no more are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(streams.refused()) < len(streams.calls) - expected_open:
        time.sleep(0.05)
    time.sleep(0.3)
    assert (streams.open(), len(streams.refused())) == (expected_open, len(streams.calls) - expected_open)


def test_one_connection_cannot_take_the_server(guarded_router):
    """12 silent streams on one connection: 8 run (the per-connection limit), 4 are refused with
    RetryInfo; another vendor's calls and the health check are unaffected."""
    from hybridpref_client.core.grpc_errors import retry_delay_s

    router, keys = guarded_router
    streams = IdleStreams(router.address, keys["greedy"], 12, channels=1)
    try:
        _settle(streams, 8)
        assert all(retry_delay_s(e) for e in streams.refused())
        assert "per connection" in streams.refused()[0].details()
        assert _beta_call(router.address, keys["beta"]) == grpc.StatusCode.OK
        assert _health(router.address) == 1  # SERVING
    finally:
        streams.close()


def test_a_vendor_without_max_concurrent_gets_the_finite_default(guarded_router):
    router, keys = guarded_router
    streams = IdleStreams(router.address, keys["nolimit"], 10, channels=10)
    try:
        _settle(streams, 4)  # the default of 4 (unlimited before the fix)
        assert "limit 4" in streams.refused()[0].details()
        assert _beta_call(router.address, keys["beta"]) == grpc.StatusCode.OK
    finally:
        streams.close()


def test_a_full_server_still_answers_health_and_silent_streams_are_closed(guarded_router):
    """40 silent streams over 5 connections fill the server (24 at once): others are refused with
    RetryInfo, but Health/Check on the same port answers SERVING (gRPC's own cap refused it too), and
    after 3 s of silence the streams are closed (DEADLINE_EXCEEDED), so the others get in again."""
    router, keys = guarded_router
    streams = IdleStreams(router.address, keys["greedy"], 40, channels=5)
    try:
        _settle(streams, 24)
        assert _beta_call(router.address, keys["beta"]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _health(router.address) == 1  # SERVING: health is never counted nor refused
        start = time.monotonic()
        while streams.open() and time.monotonic() - start < IDLE_S + 5:
            time.sleep(0.1)
        closed = [c for c in streams.calls if c.done() and c.code() == grpc.StatusCode.DEADLINE_EXCEEDED]
        assert len(closed) == 24 and "no request message" in closed[0].details()
        assert time.monotonic() - start < IDLE_S + 3
        assert _beta_call(router.address, keys["beta"]) == grpc.StatusCode.OK
    finally:
        streams.close()
