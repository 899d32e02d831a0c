"""The SDK's retries (``hybridpref_client.retry``) against a real gRPC server on loopback that answers
from a script: which failures are retried, how far apart the attempts are (the server's
``google.rpc.RetryInfo`` first, then full jitter), when the client gives up, and that bad input is
never re-sent. A healthy router cannot be made to refuse on cue, hence the scripted server; its
refusals are built by the services' own ``status_for``, so they carry the same details."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from hybridpref.v1 import router_pb2
from hybridpref_client import (
    AsyncRouterClient,
    HybridprefError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RouterClient,
    RoutingError,
    UnavailableError,
)
from hybridpref_client.core.errors import BackendUnavailable, FieldViolation, InvalidInput, QuotaExceeded
from hybridpref_client.core.grpc_errors import MAX_LISTED_VIOLATIONS, status_for
from hybridpref_client.retry import Retrier, RetryPolicy

ROWS = [{"id": f"r{i}", "prompt": "What is 2 + 2?", "response_a": "4", "response_b": "5"} for i in range(3)]


def quota(retry_after_s: float | None) -> grpc.Status:
    return status_for(QuotaExceeded("vendor 'acme' is over its quota", retry_after_s=retry_after_s))


def unavailable(retry_after_s: float | None = None) -> grpc.Status:
    return status_for(BackendUnavailable("the judge is down", retry_after_s=retry_after_s))


def bad_rows(n: int) -> grpc.Status:
    return status_for(InvalidInput([FieldViolation(f"instances[{i}].response_a", "empty response") for i in range(n)]))


class Scripted:
    """Answers call k with ``script[k]`` (the last entry repeats): a ``grpc.Status`` to refuse with,
    ``"ok"`` to answer, or (stream only) ``"partial"``: one decision, then UNAVAILABLE."""

    def __init__(self, script: list):
        self.script = script
        self.times: list[float] = []
        self.keys: list[str | None] = []
        self._lock = threading.Lock()

    def _next(self, context: grpc.ServicerContext):
        with self._lock:
            self.times.append(time.monotonic())
            self.keys.append(dict(context.invocation_metadata()).get("authorization"))
            return self.script[min(len(self.times) - 1, len(self.script) - 1)]

    @property
    def calls(self) -> int:
        return len(self.times)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        step = self._next(context)
        if isinstance(step, grpc.Status):
            context.abort_with_status(step)
        return router_pb2.RouteInstancesResponse().SerializeToString()

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        step = self._next(context)
        if isinstance(step, grpc.Status):
            context.abort_with_status(step)
        for _ in requests:  # read the whole request stream, as the router does
            pass
        decision = router_pb2.RoutingDecision(id="r0")
        yield router_pb2.RouteInstancesStreamResponse(
            decisions=router_pb2.DecisionChunk(decisions=[decision])
        ).SerializeToString()
        if step == "partial":
            context.abort_with_status(unavailable())
        yield router_pb2.RouteInstancesStreamResponse(summary=router_pb2.RoutingSummary(strategy="random")).SerializeToString()


@pytest.fixture()
def scripted():
    servers = []

    def start(*script) -> tuple[str, Scripted]:
        handler = Scripted(list(script))
        server = grpc.server(futures.ThreadPoolExecutor(4))
        methods = {
            "RouteInstances": grpc.unary_unary_rpc_method_handler(handler.unary),
            "RouteInstancesStream": grpc.stream_stream_rpc_method_handler(handler.stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hybridpref.v1.RouterService", methods),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", handler

    yield start
    for server in servers:
        server.stop(0)


def route(address: str, sync: bool = True, stream: bool = False, **options):
    """One call with ``RouterClient`` or ``AsyncRouterClient``; returns (result or error, seconds)."""
    call_kw = {key: options.pop(key) for key in ("on_progress", "chunk_size") if key in options}
    options.setdefault("timeout_s", 20)
    t0 = time.monotonic()
    try:
        if sync:
            with RouterClient(address, **options) as client:
                method = client.route_stream if stream else client.route
                out = method(ROWS, fraction=0.5, **call_kw)
        else:

            async def main():
                async with AsyncRouterClient(address, **options) as client:
                    method = client.route_stream if stream else client.route
                    return await method(ROWS, fraction=0.5, **call_kw)

            out = asyncio.run(main())
    except RoutingError as exc:
        out = exc
    return out, time.monotonic() - t0


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_unavailable_is_retried_then_succeeds(scripted, sync):
    address, server = scripted(unavailable(), unavailable(), "ok")
    out, _ = route(address, sync, api_key="k1", initial_backoff_s=0.05, retry_seed=1)
    assert not isinstance(out, Exception) and out.decisions == []
    assert server.calls == 3 and server.keys == ["Bearer k1"] * 3  # every attempt carries the key
    assert all(gap < 0.05 * 2**k + 0.25 for k, gap in enumerate(server.gaps()))  # full jitter below the cap


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_quota_refusal_waits_for_the_servers_retry_info(scripted, sync):
    # Issue 18: the SDK retried 4 times in 1.5 s although RetryInfo said 21.8 s.
    address, server = scripted(quota(0.4), quota(0.4), "ok")
    out, _ = route(address, sync, initial_backoff_s=0.05, max_backoff_s=0.1, retry_seed=3)
    assert not isinstance(out, Exception)
    assert server.calls == 3
    for gap in server.gaps():
        assert 0.4 <= gap < 0.4 + 0.1 + 0.25, server.gaps()  # never before RetryInfo, at most the jitter cap after


def test_resource_exhausted_without_retry_info_is_not_retried(scripted):
    # A request larger than the whole quota (or a size limit): the same call can never succeed.
    address, server = scripted(quota(None))
    out, _ = route(address, initial_backoff_s=0.05)
    assert isinstance(out, ResourceExhaustedError) and out.retry_after_s is None
    assert server.calls == 1 and out.attempts == 1


def test_retry_info_beyond_the_wait_budget_fails_at_once(scripted):
    address, server = scripted(quota(30.0), "ok")
    out, seconds = route(address, max_retry_wait_s=2.0)
    assert isinstance(out, ResourceExhaustedError) and out.retry_after_s == pytest.approx(30.0)
    assert server.calls == 1 and seconds < 1.0  # the caller schedules its own retry from retry_after_s


def test_the_deadline_caps_the_whole_call_retries_included(scripted):
    address, server = scripted(unavailable(0.3))
    out, seconds = route(address, timeout_s=1.0, max_attempts=20)
    assert isinstance(out, UnavailableError)
    assert seconds < 1.3 and 2 <= server.calls <= 4 and out.attempts == server.calls


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_ten_thousand_bad_rows_are_invalid_argument_never_retried(scripted, sync):
    # Issue 18, F1: 10,000 violations made a 630 KB trailer that gRPC refused (RESOURCE_EXHAUSTED,
    # no field named), and the SDK re-sent the batch. The status lists the first rows and the count.
    address, server = scripted(bad_rows(10_000), "ok")
    out, _ = route(address, sync, initial_backoff_s=0.05)
    assert isinstance(out, InvalidArgumentError) and out.code == grpc.StatusCode.INVALID_ARGUMENT
    assert server.calls == 1 and out.attempts == 1
    assert 1 <= len(out.violations) <= MAX_LISTED_VIOLATIONS and out.violation_total == 10_000
    assert [v.field for v in out.violations[:2]] == ["instances[0].response_a", "instances[1].response_a"]
    assert "and 9995 more" in out.details


def test_stream_is_retried_only_before_the_router_answered(scripted):
    events: list[tuple[str, int]] = []
    address, server = scripted(unavailable(), "ok")
    out, _ = route(address, stream=True, initial_backoff_s=0.05, on_progress=lambda p, n: events.append((p, n)), chunk_size=2)
    assert not isinstance(out, Exception) and [d.id for d in out.decisions] == ["r0"] and server.calls == 2
    assert ("retry", 2) in events and events[-1] == ("received", 1)

    address, server = scripted("partial")
    out, _ = route(address, stream=True, initial_backoff_s=0.05)
    assert isinstance(out, UnavailableError) and out.partial and server.calls == 1  # never routed twice


def test_every_error_is_a_hybridpref_error(scripted):
    address, server = scripted(status_for(InvalidInput(FieldViolation("config.strategy", "unknown strategy 'x'"))))
    out, _ = route(address)
    assert isinstance(out, InvalidArgumentError) and isinstance(out, RoutingError) and isinstance(out, HybridprefError)
    field, description = out.violations[0]  # violations still unpack as (field, description)
    assert field == "config.strategy" and "unknown strategy" in description
    with RouterClient(address) as client, pytest.raises(InvalidInput) as err:  # bad rows: caught before any call
        client.route([{"id": "x", "prompt": "p", "response_a": "a"}, 7], fraction=0.5)
    assert isinstance(err.value, HybridprefError) and server.calls == 1
    assert [v.field for v in err.value.violations] == ["instances[0].response_b", "instances[1]"]


def test_jitter_is_reproducible_with_a_seed_and_full_without():
    policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=1.0, seed=11)
    waits = lambda p: [Retrier(p).wait_s(k, None) for k in range(1, 7)]  # noqa: E731
    assert waits(policy) == waits(policy) != waits(RetryPolicy(initial_backoff_s=0.2, max_backoff_s=1.0, seed=12))
    caps = [min(1.0, 0.2 * 2 ** (k - 1)) for k in range(1, 7)]
    assert all(0 <= w <= cap for w, cap in zip(waits(policy), caps))
    spread = [Retrier(RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0)).wait_s(1, None) for _ in range(200)]
    assert min(spread) < 0.1 and max(spread) > 0.9  # full jitter: the whole [0, cap) range


@pytest.mark.parametrize("n", [1, 400, 20_000])
def test_error_details_stay_under_grpcs_metadata_soft_limit(n):
    # Worst case: every field and description at its length cap, in 3- and 4-byte characters
    # (grpc-message is percent-encoded: 3 bytes per byte; -bin values travel in base64).
    import base64
    from urllib.parse import quote

    violations = [FieldViolation("字" * 300 + f"[{i}]", "😀" * 600) for i in range(n)]
    status = status_for(InvalidInput(violations))
    wire = len(quote(status.details.encode("utf-8"), safe=" ")) + sum(
        len(key) + len(base64.b64encode(value) if key.endswith("-bin") else value) for key, value in status.trailing_metadata
    )
    assert wire < 8 * 1024  # gRPC may refuse metadata above 8 KiB (soft limit) and must above 16 KiB
    from google.rpc import error_details_pb2, status_pb2

    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    assert proto.details[0].Unpack(bad) and bad.field_violations[0].field.startswith("字")  # the first row is named
