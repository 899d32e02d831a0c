"""The predictor over gRPC: FAILED_PRECONDITION until a bundle is loaded, hot reload of a
bundle dropped into the watched folder, the "unchanged" answer for a known version, and the removed RPCs."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.common.vocabulary import NUM_TAGS
from hybridpref.predictor.core import default_bundle_path
from hybridpref.server.server import start_service
from hybridpref.server.settings import Settings
from hybridpref.v1 import predictor_pb2, predictor_pb2_grpc


@pytest.fixture(scope="module")
def watched(background_loop, tmp_path_factory):
    from hybridpref.predictor.servicer import predictor_handle

    folder = tmp_path_factory.mktemp("bundle") / "current"
    folder.mkdir()
    settings = Settings(predictor={"bundle_path": str(folder), "bundle_watch_s": 0.2})
    running = background_loop.run(start_service(predictor_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    channel = grpc.insecure_channel(running.address)
    stub = predictor_pb2_grpc.PredictorServiceStub(channel)
    stub.channel = channel  # for calls outside the contract (removed RPCs)
    yield folder, stub, health_pb2_grpc.HealthStub(channel)
    channel.close()
    background_loop.run(running.stop(0.2))


def service_status(health) -> int:
    return health.Check(health_pb2.HealthCheckRequest(service="hybridpref.v1.PredictorService")).status


def test_no_bundle_then_hot_reload(watched):
    folder, stub, health = watched
    info = stub.GetModelInfo(predictor_pb2.GetModelInfoRequest())
    assert not info.loaded and info.status_message
    assert service_status(health) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRoutingModel(predictor_pb2.GetRoutingModelRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    shutil.copytree(default_bundle_path(), folder, dirs_exist_ok=True)
    deadline = time.monotonic() + 30
    while not stub.GetModelInfo(predictor_pb2.GetModelInfoRequest()).loaded:
        assert time.monotonic() < deadline, "the watcher never loaded the new bundle"
        time.sleep(0.1)
    assert service_status(health) == health_pb2.HealthCheckResponse.SERVING
    model = stub.GetRoutingModel(predictor_pb2.GetRoutingModelRequest())
    assert model.bundle_version == stub.GetModelInfo(predictor_pb2.GetModelInfoRequest()).bundle_version
    assert len(model.ppm.linear) == NUM_TAGS and model.HasField("correction")
    again = stub.GetRoutingModel(predictor_pb2.GetRoutingModelRequest(known_bundle_version=model.bundle_version))
    assert again.unchanged and not again.HasField("ppm")


def test_removed_rpcs_are_unimplemented(watched):
    """ScoreMixes and InstanceGains are gone from the contract (0.2): a stale caller gets UNIMPLEMENTED."""
    _, stub, _ = watched
    channel = stub.channel
    for method in ("ScoreMixes", "InstanceGains"):
        call = channel.unary_unary(
            f"/hybridpref.v1.PredictorService/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as err:
            call(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
