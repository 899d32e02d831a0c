"""TLS on every port and mutual TLS on the internal hops, with certificates made in the test
(``trustme``): the whole stack routes over mTLS, a caller without a client certificate or
without TLS is refused, and the plaintext health-only port answers the kubelet's probes."""

from __future__ import annotations

import time

import grpc
import pytest
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.pki import write_pki

from hybridpref.server.settings import Settings
from hybridpref.v1 import router_pb2, router_pb2_grpc, tagger_pb2, tagger_pb2_grpc
from hybridpref_client.core.instances import read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_pki(tmp_path_factory.mktemp("pki"), "hybridpref-router")


@pytest.fixture(scope="module")
def mtls_stack(background_loop, pki, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        tls={
            "cert_file": str(pki["server.pem"]),
            "key_file": str(pki["server.key"]),
            "client_ca_file": str(pki["ca.pem"]),
            "ca_file": str(pki["ca.pem"]),
            "client_cert_file": str(pki["client.pem"]),
            "client_key_file": str(pki["client.key"]),
        },
        server={"health_port": 0},
    )
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.2))


def credentials(pki, client_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki["client.key"].read_bytes() if client_cert else None,
        certificate_chain=pki["client.pem"].read_bytes() if client_cert else None,
    )


def _route_request():
    from hybridpref.v1 import common_pb2
    from hybridpref_client.core.convert import instances_to_proto

    instances = read_jsonl(str(SAMPLE))[:6]
    return router_pb2.RouteInstancesRequest(
        instances=instances_to_proto(instances),
        config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5), strategy="greedy"),
    )


def test_routing_works_over_mutual_tls_on_every_hop(mtls_stack, pki):
    assert all(r.tls for r in mtls_stack.services.values())
    with grpc.secure_channel(mtls_stack.router_address, credentials(pki)) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).RouteInstances(_route_request(), timeout=60)
    # greedy needs the tagger, the predictor and (for LM-routed instances) the judge: all three hops spoke mTLS.
    assert len(reply.decisions) == 6 and reply.summary.bundle_version
    with grpc.secure_channel(mtls_stack.router_address, credentials(pki)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(50):  # the watcher polls every second; backends finish loading around now
            status = health.Check(health_pb2.HealthCheckRequest(service="hybridpref.v1.RouterService"), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.1)
    assert status == health_pb2.HealthCheckResponse.SERVING  # its watcher reaches the backends over mTLS


def test_backend_refuses_a_caller_without_client_certificate(mtls_stack, pki):
    request = tagger_pb2.TagInstancesRequest()
    with grpc.secure_channel(mtls_stack.address("tagger"), credentials(pki, client_cert=False)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            tagger_pb2_grpc.TaggerServiceStub(channel).TagInstances(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_caller_is_refused(mtls_stack):
    with grpc.insecure_channel(mtls_stack.router_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(channel).RouteInstances(_route_request(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_for_probes(mtls_stack):
    router = mtls_stack.services["router"]
    assert router.health_port
    with grpc.insecure_channel(f"127.0.0.1:{router.health_port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # nothing but health on that port
            router_pb2_grpc.RouterServiceStub(channel).RouteInstances(_route_request(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_side_tls_only(background_loop, pki):
    """TLS without client certificates (a vendor-facing router): any caller that trusts the CA gets in."""
    from hybridpref.router.servicer import router_handle
    from hybridpref.server.server import start_service

    settings = Settings(
        tls={"cert_file": str(pki["server.pem"]), "key_file": str(pki["server.key"])},
        router=dict.fromkeys(("tagger_address", "judge_address", "predictor_address"), "127.0.0.1:1"),
    )
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    try:
        with grpc.secure_channel(running.address, credentials(pki, client_cert=False)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        background_loop.run(running.stop(0.2))
