"""The predictor over gRPC: FAILED_PRECONDITION until a bundle is loaded, hot reload of a
bundle dropped into the watched folder, and bad count vectors as INVALID_ARGUMENT."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.common.grpc_errors import field_violations
from hybridpref.common.server import start_service
from hybridpref.common.settings import Settings
from hybridpref.common.vocabulary import NUM_TAGS
from hybridpref.predictor.core import default_bundle_path
from hybridpref.v1 import predictor_pb2, predictor_pb2_grpc


@pytest.fixture(scope="module")
def watched(background_loop, tmp_path_factory):
    from hybridpref.predictor.servicer import predictor_handle

    folder = tmp_path_factory.mktemp("bundle") / "current"
    folder.mkdir()
    settings = Settings(bundle_path=str(folder), bundle_watch_s=0.2)
    running = background_loop.run(start_service(predictor_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    channel = grpc.insecure_channel(running.address)
    yield folder, predictor_pb2_grpc.PredictorServiceStub(channel), health_pb2_grpc.HealthStub(channel)
    channel.close()
    background_loop.run(running.stop(0.2))


def service_status(health) -> int:
    return health.Check(health_pb2.HealthCheckRequest(service="hybridpref.v1.PredictorService")).status


def mixes(*rows) -> predictor_pb2.ScoreMixesRequest:
    return predictor_pb2.ScoreMixesRequest(mixes=[predictor_pb2.MixVector(counts=r) for r in rows], pool_size=10)


def test_no_bundle_then_hot_reload(watched):
    folder, stub, health = watched
    info = stub.GetModelInfo(predictor_pb2.GetModelInfoRequest())
    assert not info.loaded and info.status_message
    assert service_status(health) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.ScoreMixes(mixes([0.0] * NUM_TAGS))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    shutil.copytree(default_bundle_path(), folder, dirs_exist_ok=True)
    deadline = time.monotonic() + 30
    while not stub.GetModelInfo(predictor_pb2.GetModelInfoRequest()).loaded:
        assert time.monotonic() < deadline, "the watcher never loaded the new bundle"
        time.sleep(0.1)
    assert service_status(health) == health_pb2.HealthCheckResponse.SERVING
    scores = stub.ScoreMixes(mixes([0.0] * NUM_TAGS, [1.0] * NUM_TAGS)).scores
    assert len(scores) == 2 and scores[0] != scores[1]


def test_bad_count_vectors(watched):
    _, stub, _ = watched
    if not stub.GetModelInfo(predictor_pb2.GetModelInfoRequest()).loaded:
        pytest.skip("needs the bundle from the reload test")
    for request, field in (
        (mixes([0.0] * NUM_TAGS, [1.0] * 3), "mixes[1].counts"),
        (mixes([0.0] * (NUM_TAGS - 1) + [-1.0]), "mixes[0].counts"),
        (mixes([0.0] * (NUM_TAGS - 1) + [float("nan")]), "mixes[0].counts"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.ScoreMixes(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(err.value)] == [field]
    wrong_vocabulary = mixes([0.0] * NUM_TAGS)
    wrong_vocabulary.vocabulary_version = "some-other-vocabulary"
    with pytest.raises(grpc.RpcError) as err:
        stub.ScoreMixes(wrong_vocabulary)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
