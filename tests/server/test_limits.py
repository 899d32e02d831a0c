"""Vendor mistakes are INVALID_ARGUMENT with field violations, before any tagging, with the
instance index counted in the caller's whole batch (streams included), never UNAVAILABLE."""

from __future__ import annotations

import grpc
import pytest

from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.grpc_errors import field_violations
from hybridpref_client.core.instances import Label, PreferenceInstance, is_blank


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"}, router={"default_strategy": "random"}
    )
    running = background_loop.run(start_embedded_stack(settings, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture()
def stub(stack):
    with grpc.insecure_channel(stack.router_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def batch(n: int, overrides: dict[int, dict] | None = None) -> list[PreferenceInstance]:
    out = []
    for i in range(n):
        inst = PreferenceInstance(
            id=f"i{i}", prompt="What is 2+2?", response_a="4", response_b="Four.", lm_labels={"gpt4": Label.A_BETTER}
        )
        for key, value in (overrides or {}).get(i, {}).items():
            setattr(inst, key, value)
        out.append(inst)
    return out


def route(stub, instances, **config) -> grpc.RpcError | router_pb2.RouteInstancesResponse:
    config.setdefault("budget", common_pb2.Budget(fraction=0.5))
    request = router_pb2.RouteInstancesRequest(
        instances=instances_to_proto(instances) if instances and isinstance(instances[0], PreferenceInstance) else instances,
        config=router_pb2.RouteConfig(**config),
    )
    try:
        return stub.RouteInstances(request, timeout=30)
    except grpc.RpcError as exc:
        return exc


def stream(stub, instances, chunk: int, **config):
    config.setdefault("budget", common_pb2.Budget(fraction=0.5))

    def messages():
        yield router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(**config))
        for start in range(0, len(instances), chunk):
            part = instances_to_proto(instances[start : start + chunk])
            yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=part))

    try:
        return list(stub.RouteInstancesStream(messages(), timeout=30))
    except grpc.RpcError as exc:
        return exc


def fields(error) -> set[str]:
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    return {f for f, _ in field_violations(error)}


def tagger_calls(stack) -> float:
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value("hybridpref_rpc_requests_total", {"service": "tagger", "method": "TagInstances", "code": "OK"})
        or 0.0
    )


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\x00", " \u200b\ufeff\x00\n\t", "\u2028\u00a0"])
def test_invisible_response_is_a_field_violation(stub, text):
    assert is_blank(text)
    assert fields(route(stub, batch(3, {2: {"response_b": text}}))) == {"instances[2].response_b"}


def test_invisible_response_in_a_stream_names_the_callers_index(stub, stack):
    before = tagger_calls(stack)
    error = stream(stub, batch(70, {66: {"response_a": "\ufeff\x00"}}), chunk=32)
    assert fields(error) == {"instances[66].response_a"}
    assert tagger_calls(stack) - before <= 2  # refused in the chunk where it arrives, not after routing


def test_missing_replay_label_is_refused_before_tagging(stub, stack):
    before = tagger_calls(stack)
    error = route(stub, batch(5, {3: {"lm_labels": {"other": Label.TIE}}}))
    assert fields(error) == {"instances[3].lm_labels"}
    assert tagger_calls(stack) == before
    error = stream(stub, batch(50, {45: {"lm_labels": {}}}), chunk=32, strategy="all_lm")
    assert fields(error) == {"instances[45].lm_labels"}
    # Nobody is judged under all_human: no label needed.
    assert not isinstance(route(stub, batch(2, {1: {"lm_labels": {}}}), strategy="all_human"), grpc.RpcError)


def test_unknown_template_and_replay_judge_are_refused(stub, stack):
    before = tagger_calls(stack)
    assert fields(route(stub, batch(2), judge_template="no-such-template")) == {"config.judge_template"}
    assert fields(route(stub, batch(2), replay_judge="nobody")) == {"config.replay_judge"}  # no row records it
    assert tagger_calls(stack) == before
    ok = route(stub, batch(2), judge_template="Short@1", replay_judge="gpt4", strategy="all_lm")
    assert len(ok.decisions) == 2


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"judge_position_mode": 7}, "config.judge_position_mode"),
        ({"judge_position_mode": -1}, "config.judge_position_mode"),
        ({"simulated_candidates": 4294967295, "strategy": "simulated"}, "config.simulated_candidates"),
        ({"explain_top_k": 1000}, "config.explain_top_k"),
        ({"budget": common_pb2.Budget(cost=1e308)}, "config.budget.cost"),
        ({"budget": common_pb2.Budget(cost=float("nan"))}, "config.budget.cost"),
        ({"budget": common_pb2.Budget(fraction=float("inf"))}, "config.budget.fraction"),
        ({"budget": common_pb2.Budget(count=2**64 - 1)}, "config.budget.count"),
        ({"strategy": "x" * 10_000}, "config.strategy"),
    ],
)
def test_out_of_range_options(stub, config, field):
    error = route(stub, batch(2), **config)
    assert field in fields(error)
    assert len(error.details()) < 2000  # caller strings are capped in messages


def test_out_of_range_labels_and_huge_costs(stub):
    instances = instances_to_proto(batch(3))
    instances[0].human_label = 42
    instances[1].lm_labels["gpt4"] = -3
    instances[2].human_cost = 1e308
    assert fields(route(stub, instances)) == {
        "instances[0].human_label",
        "instances[1].lm_labels['gpt4']",
        "instances[2].human_cost",
    }


def test_oversized_text_and_ids(stub):
    huge = "x" * (Settings().limits.max_text_chars + 1)
    error = route(stub, batch(2, {1: {"response_a": huge, "id": "y" * 1000}}))
    assert fields(error) == {"instances[1].response_a", "instances[1].id"}


def test_long_request_id_is_capped(stack):
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RouteInstancesRequest(
            instances=instances_to_proto(batch(2)),
            config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5), strategy="random"),
        )
        reply = stub.RouteInstances(request, metadata=(("x-request-id", "r" * 5000 + " {evil} <x>"),), timeout=30)
    assert reply.summary.request_id == "r" * 128
