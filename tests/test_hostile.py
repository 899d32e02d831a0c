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

    settings = Settings(tagger_profile="fast", judge_backend="replay", judge_replay_key="gpt4", default_strategy="random")
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
