"""Hostile input against real RouteInstances and TagInstances servers (hypothesis, seeded).

Structured fuzz of every request field (out-of-range enums, huge and non-finite numbers,
blank-looking unicode, oversized names) plus raw undecodable bytes through a generic
channel call: no request may end in INTERNAL or UNKNOWN, and the services stay SERVING.
The stack is the fast one (tagger ``fast`` profile, replay judge) so 2,000+ requests fit in
well under a minute; most requests are refused by validation, the rest are routed end to end.
"""

from __future__ import annotations

import collections
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc, tagger_pb2, tagger_pb2_grpc

ROUTE_EXAMPLES = 1000
TAG_EXAMPLES = 700
RAW_EXAMPLES = 320
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(
    max_examples=ROUTE_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

# Characters that look empty, control characters, astral and combining characters, RTL text.
WEIRD = "\x00\u200b\ufeff\u2028\u202e\u0301\t\n \u00a0\U0001f600\u05d0\x7f\x1b"
texts = st.one_of(
    st.sampled_from(["", " ", "\u200b", "\ufeff\x00", "ok answer", "Another answer.", "x" * 3000]),
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(WEIRD)), max_size=40),
)
int32 = st.integers(-(2**31), 2**31 - 1)
enum_values = st.one_of(st.integers(0, 5), st.integers(-3, 9), int32)
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324, 0.0, 1.0, 0.5]))


@st.composite
def instances(draw, index: int):
    msg = common_pb2.PreferenceInstance(
        id=draw(st.one_of(st.just(f"i{index}"), st.just("dup"), texts)),
        prompt=draw(st.one_of(st.just("What is 2+2?"), texts)),
        response_a=draw(st.one_of(st.just("It is 4."), texts)),
        response_b=draw(st.one_of(st.just("Four, because 2+2=4."), texts)),
        human_label=draw(st.one_of(st.just(0), enum_values)),
    )
    if draw(st.booleans()):
        msg.lm_labels["gpt4"] = draw(st.one_of(st.integers(1, 5), enum_values))
    if draw(st.integers(0, 5)) == 0:
        msg.lm_labels[draw(texts)] = draw(enum_values)
    if draw(st.integers(0, 3)) == 0:
        msg.human_cost = draw(doubles)
    if draw(st.integers(0, 6)) == 0:
        msg.messages.add(role=draw(texts), content=draw(texts))
    if draw(st.integers(0, 6)) == 0:
        msg.metadata[draw(texts)] = draw(texts)
    return msg


@st.composite
def budgets(draw):
    kind = draw(st.sampled_from(["fraction", "count", "cost", "auto", None]))
    if kind is None:
        return common_pb2.Budget()
    value = {
        "fraction": st.one_of(st.floats(0, 1), doubles),
        "count": st.one_of(st.integers(0, 4), st.integers(0, 2**64 - 1)),
        "cost": st.one_of(st.floats(0, 10), doubles),
        "auto": st.booleans(),
    }[kind]
    return common_pb2.Budget(**{kind: draw(value)})


@st.composite
def route_requests(draw):
    n = draw(st.integers(0, 4))
    config = router_pb2.RouteConfig(
        budget=draw(budgets()),
        strategy=draw(
            st.one_of(
                st.sampled_from(
                    ["", "random", "all_lm", "all_human", "topk", "greedy", "simulated", "optimal_pos", "judge_aware"]
                ),
                texts,
            )
        ),
        seed=draw(st.integers(0, 2**64 - 1)),
        judge_position_mode=draw(st.one_of(st.integers(0, 2), int32)),
        judge_template=draw(st.one_of(st.sampled_from(["", "multipref", "short", "multipref@1"]), texts)),
        replay_judge=draw(st.one_of(st.sampled_from(["", "gpt4", "nobody"]), texts)),
        explain_top_k=draw(st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1))),
        simulated_candidates=draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))),
    )
    return router_pb2.RouteInstancesRequest(instances=[draw(instances(i)) for i in range(n)], config=config)


@st.composite
def plausible_instances(draw, n: int):
    """Instances a careful vendor might send (valid texts and labels)."""
    msgs = [
        common_pb2.PreferenceInstance(
            id=f"p{i}",
            prompt=draw(st.sampled_from(["What is 2+2?", "Name a colour.\u200b"])),
            response_a=draw(st.sampled_from(["It is 4.", "Blue", "\U0001f600 red"])),
            response_b=draw(st.sampled_from(["Four.", "Green, I think.", "x" * 500])),
        )
        for i in range(n)
    ]
    for m in msgs:
        m.lm_labels["gpt4"] = draw(st.integers(1, 5))
    return msgs


@st.composite
def plausible_route_requests(draw):
    """Valid instances, options still fuzzed within their ranges."""
    n = draw(st.integers(1, 4))
    msgs = draw(plausible_instances(n))
    config = router_pb2.RouteConfig(
        budget=draw(
            st.one_of(
                st.builds(common_pb2.Budget, fraction=st.floats(0, 1)),
                st.builds(common_pb2.Budget, count=st.integers(0, n)),
                st.builds(common_pb2.Budget, cost=st.floats(0, 10)),
                st.builds(common_pb2.Budget, auto=st.just(True)),
            )
        ),
        strategy=draw(
            st.sampled_from(["", "random", "all_lm", "all_human", "topk", "greedy", "simulated", "optimal_pos", "judge_aware"])
        ),
        seed=draw(st.integers(0, 2**64 - 1)),
        judge_position_mode=draw(st.integers(0, 2)),
        judge_template=draw(st.sampled_from(["", "multipref", "short"])),
        explain_top_k=draw(st.integers(0, 90)),
        simulated_candidates=draw(st.integers(0, 300)),
    )
    return router_pb2.RouteInstancesRequest(instances=msgs, config=config)


@st.composite
def tag_requests(draw):
    n = draw(st.integers(0, 3))
    profile = draw(st.one_of(st.sampled_from(["", "fast", "default", "nope"]), texts))
    if profile == "default":  # loading the default profile's models is not what this test is about
        profile = "fast"
    if draw(st.booleans()):
        return tagger_pb2.TagInstancesRequest(instances=draw(plausible_instances(n + 1)), profile=profile)
    return tagger_pb2.TagInstancesRequest(instances=[draw(instances(i)) for i in range(n)], profile=profile)


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings_ = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        router={"default_strategy": "random"},
        server={"max_deadline_s": 20},
    )
    running = background_loop.run(start_embedded_stack(settings_, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def codes():
    return collections.Counter()


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_fuzz_route_instances(stack, codes):
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        @FUZZ
        @given(st.one_of(route_requests(), plausible_route_requests()))
        def run(request):
            code = _code(lambda: stub.RouteInstances(request, timeout=20))
            codes[("route", code.name)] += 1
            # A vendor's mistake is never reported as a server fault (UNAVAILABLE after tagging).
            assert code not in FORBIDDEN | {grpc.StatusCode.UNAVAILABLE}, request

        run()
    assert sum(n for (what, _), n in codes.items() if what == "route") >= ROUTE_EXAMPLES
    assert codes[("route", "OK")] >= 20 and codes[("route", "INVALID_ARGUMENT")] >= 100, codes  # both paths exercised


def test_fuzz_tag_instances(stack, codes):
    with grpc.insecure_channel(stack.address("tagger")) as channel:
        stub = tagger_pb2_grpc.TaggerServiceStub(channel)

        @settings(FUZZ, max_examples=TAG_EXAMPLES)
        @given(tag_requests())
        def run(request):
            code = _code(lambda: stub.TagInstances(request, timeout=20))
            codes[("tag", code.name)] += 1
            assert code not in FORBIDDEN, request

        run()
    assert codes[("tag", "OK")] >= 20 and codes[("tag", "INVALID_ARGUMENT")] >= 50, codes


@pytest.mark.parametrize("service", ["router", "tagger"])
def test_fuzz_undecodable_bytes(stack, codes, service):
    method = {"router": "/hybridpref.v1.RouterService/RouteInstances", "tagger": "/hybridpref.v1.TaggerService/TagInstances"}[
        service
    ]
    with grpc.insecure_channel(stack.address(service)) as channel:
        call = channel.unary_unary(method)  # no serializers: raw bytes on the wire

        @settings(FUZZ, max_examples=RAW_EXAMPLES // 2)
        @given(st.one_of(st.binary(max_size=64), st.sampled_from([b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x12\xff"])))
        def run(payload):
            code = _code(lambda: call(payload, timeout=10))
            codes[("raw", code.name)] += 1
            assert code not in FORBIDDEN, payload

        run()
    assert codes[("raw", "INVALID_ARGUMENT")] >= 10


def test_stream_undecodable_is_invalid_argument(stack):
    with grpc.insecure_channel(stack.router_address) as channel:
        call = channel.stream_stream("/hybridpref.v1.RouterService/RouteInstancesStream")
        with pytest.raises(grpc.RpcError) as err:
            list(call(iter([b"\xff\xff\xff"]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_after_the_fuzz_no_internal_and_still_serving(stack, codes):
    import urllib.request

    total = sum(codes.values())
    assert total >= 2000, total
    assert not [k for k in codes if k[1] in ("INTERNAL", "UNKNOWN")], codes
    for name, service in (("router", "hybridpref.v1.RouterService"), ("tagger", "hybridpref.v1.TaggerService")):
        with grpc.insecure_channel(stack.address(name)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    # Undecodable requests are counted per service in their own metric.
    port = stack.services["router"].metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(
        row
        for row in body.splitlines()
        if row.startswith('hybridpref_undecodable_requests_total{method="RouteInstances",service="router"}')
    )
    assert float(line.split()[-1]) >= 1
    assert math.isfinite(float(line.split()[-1]))
