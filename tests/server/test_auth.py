"""API keys, permissions, quotas and key rotation on a real router server.

The router's backends point at a closed port: a call that passes authentication and quotas
ends in INVALID_ARGUMENT (bad input) or UNAVAILABLE (no backend), which is how these tests
tell "let through" from "refused" without a full stack.
"""

from __future__ import annotations

import json
import queue
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.server.auth import KeyStore, add_vendor, bearer_key, hash_key, parse_keys
from hybridpref.server.server import start_service
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.grpc_errors import retry_delay_s

ROUTE = "/hybridpref.v1.RouterService/RouteInstances"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    keys = {
        "acme": add_vendor(path, "acme"),
        "reader": add_vendor(path, "reader", methods=["RouteInstances"]),
        "small": add_vendor(path, "small", instances_per_minute=5),
        "single": add_vendor(path, "single", max_concurrent=1),
    }
    return path, keys


@pytest.fixture(scope="module")
def router(background_loop, keys_file, log_capture):
    from hybridpref.router.servicer import router_handle

    settings = Settings(
        router=dict.fromkeys(("tagger_address", "judge_address", "predictor_address"), "127.0.0.1:1"),
        auth={"keys_file": str(keys_file[0]), "keys_reload_s": 0.1},
    )
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    yield running
    background_loop.run(running.stop(0.2))


@pytest.fixture()
def stub(router):
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def request(n: int = 1, **config) -> router_pb2.RouteInstancesRequest:
    instances = [common_pb2.PreferenceInstance(id=f"i{k}", prompt="q?", response_a="a", response_b="b") for k in range(n)]
    config.setdefault("budget", common_pb2.Budget(fraction=0.5))
    return router_pb2.RouteInstancesRequest(instances=instances, config=router_pb2.RouteConfig(strategy="random", **config))


def call_code(stub, key: str | None, req=None) -> grpc.RpcError | None:
    metadata = (("authorization", f"Bearer {key}"),) if key is not None else ()
    try:
        stub.RouteInstances(req or request(), metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc
    return None


def test_no_key_and_unknown_key_are_unauthenticated(stub, keys_file):
    assert call_code(stub, None).code() == grpc.StatusCode.UNAUTHENTICATED
    assert call_code(stub, "hpk_not-a-real-key").code() == grpc.StatusCode.UNAUTHENTICATED
    assert call_code(stub, keys_file[1]["acme"] + "x").code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_known_key_is_let_through(stub, keys_file):
    # Past auth, the router validates (bad budget -> INVALID_ARGUMENT) or calls its (absent) backends.
    bad = request(budget=common_pb2.Budget(fraction=2.0))
    assert call_code(stub, keys_file[1]["acme"], bad).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call_code(stub, keys_file[1]["acme"]).code() == grpc.StatusCode.UNAVAILABLE


def test_method_without_permission_is_permission_denied(router, keys_file):
    key = keys_file[1]["reader"]
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert call_code(stub, key).code() == grpc.StatusCode.UNAVAILABLE  # allowed: RouteInstances
        config = router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5)))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.RouteInstancesStream(iter([config]), metadata=(("authorization", f"Bearer {key}"),), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_need_no_key(router):
    with grpc.insecure_channel(router.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_instances_per_minute_quota_gives_retry_info(stub, keys_file):
    key = keys_file[1]["small"]  # 5 instances a minute
    assert call_code(stub, key, request(3)).code() == grpc.StatusCode.UNAVAILABLE  # spent 3
    error = call_code(stub, key, request(3))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_s(error)
    assert delay is not None and 5.0 < delay <= 13.0  # (3 - 2) instances at 5 a minute: ~12 s
    too_big = call_code(stub, key, request(6))  # more than a whole minute's quota: no retry helps
    assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay_s(too_big) is None


def test_concurrent_calls_quota(router, keys_file):
    key = keys_file[1]["single"]
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        pending: queue.Queue = queue.Queue()
        pending.put(router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5))))

        def messages():
            while (item := pending.get()) is not None:
                yield item

        stream = stub.RouteInstancesStream(messages(), metadata=metadata, timeout=20)
        consumer = threading.Thread(target=lambda: list(_swallow(stream)), daemon=True)
        consumer.start()
        time.sleep(0.5)  # the stream is open and waiting for chunks: one call in flight
        error = call_code(stub, key)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay_s(error) is not None
        pending.put(None)  # end the stream (its empty batch is refused): the slot frees
        consumer.join(10)
        assert call_code(stub, key).code() == grpc.StatusCode.UNAVAILABLE


def _swallow(stream):
    try:
        yield from stream
    except grpc.RpcError:
        return


def test_rotated_keys_file_is_picked_up_without_restart(router, keys_file, stub):
    path, keys = keys_file
    old = keys["acme"]
    new = add_vendor(path, "acme")  # replaces acme's key (atomic rename, as a Secret update does)
    time.sleep(0.3)
    assert call_code(stub, old).code() == grpc.StatusCode.UNAUTHENTICATED
    assert call_code(stub, new).code() == grpc.StatusCode.UNAVAILABLE
    keys["acme"] = new
    # A broken file is refused and the current keys keep working.
    text = path.read_text()
    path.write_text("{not json")
    time.sleep(0.3)
    assert call_code(stub, new).code() == grpc.StatusCode.UNAVAILABLE
    path.write_text(text)


def test_refusals_are_counted_and_the_key_never_logged(router, keys_file, stub, log_capture):
    call_code(stub, "hpk_secret-looking-wrong-key")
    assert "hpk_secret-looking-wrong-key" not in log_capture.getvalue()
    assert any(r.get("code") == "UNAUTHENTICATED" and r.get("event") == "rpc" for r in log_capture.records())


def test_keys_file_format(tmp_path):
    with pytest.raises(InvalidInput):
        parse_keys({"vendors": {"x": {"key_sha256": "abc"}}})
    policies = parse_keys({"vendors": {"x": {"key_sha256": [hash_key("k1"), hash_key("k2")], "methods": "RouteInstances"}}})
    assert policies["x"].allows("/hybridpref.v1.RouterService/RouteInstances")
    assert not policies["x"].allows("/hybridpref.v1.RouterService/RouteInstancesStream")
    path = tmp_path / "keys.yaml"
    key = add_vendor(path, "y", instances_per_minute=10)
    store = KeyStore(path)
    assert store.lookup(key).vendor == "y" and store.lookup("nope") is None
    assert "key_sha256" in path.read_text() and key not in path.read_text()
    assert bearer_key({"authorization": "Bearer  abc "}) == "abc" and bearer_key({"authorization": "Basic abc"}) is None


def test_cli_keys_add_and_hash(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "keys.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "keys",
            "add",
            "--file",
            str(path),
            "--vendor",
            "v1",
            "--methods",
            "RouteInstances",
            "--instances-per-minute",
            "100",
            "--max-concurrent",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    entry = json.loads(path.read_text())["vendors"]["v1"]
    assert entry["key_sha256"] == hash_key(key) and entry["max_concurrent"] == 2
    hashed = subprocess.run(
        [sys.executable, "-m", "hybridpref.cli.main", "keys", "hash"],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hashed.returncode == 0 and hashed.stdout.strip() == hash_key(key)


def test_auth_off_without_keys_file_says_so(background_loop, log_capture):
    from hybridpref.router.servicer import router_handle

    settings = Settings(router=dict.fromkeys(("tagger_address", "judge_address", "predictor_address"), "127.0.0.1:1"))
    running = background_loop.run(start_service(router_handle(settings), settings, port=0, metrics_port=-1))
    try:
        assert any(r.get("event") == "auth_disabled" and r.get("level") == "warning" for r in log_capture.records())
        with grpc.insecure_channel(running.address) as channel:
            assert call_code(router_pb2_grpc.RouterServiceStub(channel), None).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        background_loop.run(running.stop(0.2))


def test_stream_chunks_are_charged_as_they_arrive(router, keys_file):
    key = keys_file[1]["small"]  # 5 instances a minute; a 6-instance chunk can never fit
    instances = request(6).instances
    messages = [
        router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5))),
        router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=instances)),
    ]
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.RouteInstancesStream(iter(messages), metadata=(("authorization", f"Bearer {key}"),), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "chunks" in err.value.details()


def _remove_vendor(path, vendor: str) -> None:
    """Drop ``vendor`` from the keys file with an atomic rename (as a Secret update does)."""
    import os

    data = json.loads(path.read_text())
    data["vendors"].pop(vendor, None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_revoking_a_key_stops_its_open_stream(router, keys_file):
    """Issue 18 item 9 (hostile test O2): a stream opened before its key was revoked ran on to the end."""
    path, keys = keys_file
    key = add_vendor(path, "streamer")
    time.sleep(0.3)
    outbox: queue.Queue = queue.Queue()

    def messages():
        while (message := outbox.get(timeout=20)) is not None:
            yield message

    chunk = router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=request(2).instances))
    outbox.put(router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5))))
    with grpc.insecure_channel(router.address) as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).RouteInstancesStream(
            messages(), metadata=(("authorization", f"Bearer {key}"),), timeout=20
        )
        time.sleep(0.5)
        assert not call.done()  # authenticated, waiting for chunks
        _remove_vendor(path, "streamer")
        time.sleep(0.3)  # > keys_reload_s
        outbox.put(chunk)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        outbox.put(None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()


def test_a_deleted_keys_file_refuses_every_key_until_it_is_back(router, keys_file, stub, log_capture):
    """Issue 18 item 9 (O3): a deleted keys file kept the old keys in force; now it fails closed."""
    path, keys = keys_file
    moved = path.with_name("moved-away.json")
    path.rename(moved)
    try:
        time.sleep(0.3)
        assert call_code(stub, keys["acme"]).code() == grpc.StatusCode.UNAUTHENTICATED
        assert any(r.get("event") == "api_keys_file_missing" for r in log_capture.records())
    finally:
        moved.rename(path)
    time.sleep(0.3)
    assert call_code(stub, keys["acme"]).code() == grpc.StatusCode.UNAVAILABLE  # let through again


@pytest.mark.parametrize("as_id", ["key", "prefixed"])
def test_a_key_sent_as_request_id_is_never_logged(router, keys_file, stub, log_capture, as_id):
    """Issue 18 item 9 (O4): a caller sending its API key as x-request-id had it logged verbatim."""
    key = keys_file[1]["acme"]
    request_id = key if as_id == "key" else "trace-" + key
    try:
        stub.RouteInstances(request(), metadata=(("authorization", f"Bearer {key}"), ("x-request-id", request_id)), timeout=10)
    except grpc.RpcError:
        pass
    assert key not in log_capture.getvalue() and key[4:] not in log_capture.getvalue()
    from hybridpref.server.interceptors import clean_request_id

    assert clean_request_id("hpk_anything") is None and clean_request_id("my-trace-1") == "my-trace-1"
    assert clean_request_id("x" + "customsecret99", secret="customsecret99") is None


def _sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_vendor_is_in_the_access_log_and_a_bounded_metric_label(router, keys_file, stub, log_capture):
    """Issue 18 item 12: no metric or access-log line carried the vendor."""
    from hybridpref.server.metrics import VendorLabels

    key = keys_file[1]["reader"]
    labels = {"service": "router", "vendor": "reader", "method": "RouteInstances", "code": "UNAVAILABLE"}
    refused = {"service": "router", "vendor": "unauthenticated", "method": "RouteInstances", "code": "UNAUTHENTICATED"}
    denied = {"service": "router", "vendor": "reader", "method": "RouteInstancesStream", "code": "PERMISSION_DENIED"}
    before = [_sample("hybridpref_vendor_calls_total", x) for x in (labels, refused, denied)]
    assert call_code(stub, key).code() == grpc.StatusCode.UNAVAILABLE
    assert call_code(stub, "hpk_unknown").code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(router.address) as channel, pytest.raises(grpc.RpcError):
        list(
            router_pb2_grpc.RouterServiceStub(channel).RouteInstancesStream(
                iter([router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig())]),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
        )
    after = [_sample("hybridpref_vendor_calls_total", x) for x in (labels, refused, denied)]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    records = [r for r in log_capture.records() if r.get("event") == "rpc" and r.get("method") == "RouteInstances"]
    assert {"reader", "unauthenticated"} <= {r.get("vendor") for r in records}
    bounded = VendorLabels(limit=3)
    assert [bounded(f"v{i}") for i in range(5)] + [bounded("v1")] == ["v0", "v1", "v2", "other", "other", "v1"]
