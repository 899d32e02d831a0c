"""The shared server bootstrap, on a real router server with no backends behind it:
health, reflection, metrics, request ids, rich INVALID_ARGUMENT errors, graceful stop."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from hybridpref.server.server import start_service
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc


@pytest.fixture(scope="module")
def router_alone(background_loop, log_capture):
    from hybridpref.router.servicer import router_handle

    # Backends point at a closed port: validation must reject bad input before any downstream call.
    settings = Settings(
        router=dict.fromkeys(("tagger_address", "judge_address", "predictor_address"), "127.0.0.1:1"), limits={"max_batch": 5}
    )
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=0))
    background_loop.run(running.loaded.wait())
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture()
def stub(router_alone):
    with grpc.insecure_channel(router_alone.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def instance(i: str, a: str = "answer one", b: str = "answer two") -> common_pb2.PreferenceInstance:
    return common_pb2.PreferenceInstance(id=i, prompt="question?", response_a=a, response_b=b)


def request(instances, **budget) -> router_pb2.RouteInstancesRequest:
    budget = budget or {"fraction": 0.5}
    return router_pb2.RouteInstancesRequest(
        instances=instances, config=router_pb2.RouteConfig(budget=common_pb2.Budget(**budget), strategy="random")
    )


def violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    return {v.field: v.description for v in bad.field_violations}


def test_health_serving_and_reflection(router_alone):
    with grpc.insecure_channel(router_alone.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = lambda service: health.Check(health_pb2.HealthCheckRequest(service=service)).status  # noqa: E731
        # Alive, but not ready: its backends (a closed port) are down, so it cannot route.
        assert check("") == health_pb2.HealthCheckResponse.SERVING
        assert check("hybridpref.v1.RouterService") == health_pb2.HealthCheckResponse.NOT_SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(iter(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        names = {s.name for s in answer.list_services_response.service}
    assert {"hybridpref.v1.RouterService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


@pytest.mark.parametrize(
    ("instances", "budget", "expected"),
    [
        ([instance("")], {"fraction": 0.5}, {"instances[0].id"}),
        ([instance("a"), instance("a")], {"fraction": 0.5}, {"instances[1].id"}),
        ([instance("a", a=" "), instance("b", b="")], {"fraction": 0.5}, {"instances[0].response_a", "instances[1].response_b"}),
        ([instance("a")], {"fraction": 1.5}, {"config.budget.fraction"}),
        ([instance("a")], {"fraction": -0.1}, {"config.budget.fraction"}),
        ([instance("a"), instance("b")], {"count": 3}, {"config.budget.count"}),
        ([instance(str(i)) for i in range(6)], {"fraction": 0.5}, {"instances"}),
    ],
    ids=[
        "missing-id",
        "duplicate-id",
        "empty-responses",
        "fraction-above-1",
        "fraction-negative",
        "count-above-n",
        "batch-too-big",
    ],
)
def test_bad_input_is_invalid_argument_with_field_violations(stub, instances, budget, expected):
    with pytest.raises(grpc.RpcError) as err:
        stub.RouteInstances(request(instances, **budget), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == expected


def test_unknown_strategy_and_missing_budget(stub):
    bad = request([instance("a")])
    bad.config.strategy = "clairvoyant"
    with pytest.raises(grpc.RpcError) as err:
        stub.RouteInstances(bad, timeout=10)
    assert "config.strategy" in violations(err.value)
    no_budget = router_pb2.RouteInstancesRequest(instances=[instance("a")])
    with pytest.raises(grpc.RpcError) as err:
        stub.RouteInstances(no_budget, timeout=10)
    assert set(violations(err.value)) == {"config.budget"}


def test_backend_down_is_unavailable_not_internal(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.RouteInstances(request([instance("a"), instance("b")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # It names the backend it could not reach (the default strategy reads no tags: the judge is asked first).
    assert any(backend in err.value.details() for backend in ("tagger", "judge", "predictor")), err.value.details()


def test_metrics_count_rpcs_by_code(router_alone, stub):
    with pytest.raises(grpc.RpcError):
        stub.RouteInstances(request([instance("")]), timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{router_alone.metrics_port}/metrics", timeout=5).read().decode()
    assert 'hybridpref_rpc_requests_total{code="INVALID_ARGUMENT",method="RouteInstances",service="router"}' in body
    assert "hybridpref_rpc_latency_seconds_bucket{" in body and "hybridpref_rpc_in_flight" in body


def test_request_id_from_metadata_is_logged(stub, log_capture):
    with pytest.raises(grpc.RpcError):
        stub.RouteInstances(request([instance("")]), timeout=10, metadata=(("x-request-id", "req-bootstrap-1"),))
    mine = [r for r in log_capture.records() if r.get("request_id") == "req-bootstrap-1"]
    assert mine and all(r["service"] == "router" for r in mine)


def test_graceful_stop_goes_not_serving(background_loop):
    from hybridpref.router.servicer import router_handle

    settings = Settings()
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        background_loop.run(running.stop(0.2))
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(), timeout=2)


def test_the_loaded_heap_is_out_of_the_collectors_sight(router_alone):
    """Once loaded, a service freezes what is alive (modules, models): full collections walk only what
    requests allocate. A later settle thaws first, so nothing frozen stays uncollectable for good."""
    import gc
    import weakref

    from hybridpref.server.runtime import settle_heap

    class Node:
        pass

    assert gc.get_freeze_count() > 10_000
    node = Node()
    node.self = node  # a cycle: only the collector frees it
    alive = weakref.ref(node)
    settle_heap()  # frozen with the rest
    del node
    gc.collect()
    assert alive() is not None  # out of the collector's sight while frozen
    settle_heap()  # thawed, collected, the rest frozen again
    assert alive() is None
