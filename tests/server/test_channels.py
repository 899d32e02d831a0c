"""Channel and server options for load balancing over Kubernetes replicas: round_robin on the
router's channels and a maximum connection age on servers (docs/operations.md#load-balancing)."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc

from hybridpref.server.channels import ROUND_ROBIN, open_sync_channel
from hybridpref.server.settings import Settings


def _server(settings: Settings, name: str, delay_s: float = 0.0) -> tuple[grpc.Server, int, list[str]]:
    seen: list[str] = []
    lock = threading.Lock()

    def who(request: bytes, context) -> bytes:
        time.sleep(delay_s)
        with lock:
            seen.append(context.peer())
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(4), options=settings.server_options())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"Who": grpc.unary_unary_rpc_method_handler(who)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, seen


def test_channels_balance_round_robin_over_every_address():
    assert json.loads(ROUND_ROBIN) == {"loadBalancingConfig": [{"round_robin": {}}]}
    settings = Settings()
    (a, pa, _), (b, pb, _) = _server(settings, "a"), _server(settings, "b")
    try:
        with open_sync_channel(f"ipv4:127.0.0.1:{pa},127.0.0.1:{pb}", settings) as channel:
            who = channel.unary_unary("/t.T/Who")
            answers = [who(b"", timeout=5, wait_for_ready=True) for _ in range(20)]
        # pick_first (gRPC's default) would answer "a" twenty times.
        assert answers.count(b"a") >= 5 and answers.count(b"b") >= 5, answers
    finally:
        a.stop(0)
        b.stop(0)


def test_max_connection_age_reconnects_but_lets_calls_finish():
    assert ("grpc.max_connection_age_ms", 300_000) in Settings(server={"max_connection_age_s": 300}).server_options()
    assert not any(k == "grpc.max_connection_age_ms" for k, _ in Settings().server_options())
    settings = Settings(server={"max_connection_age_s": 0.3})
    server, port, seen = _server(settings, "s", delay_s=1.0)
    try:
        with open_sync_channel(f"127.0.0.1:{port}", Settings()) as channel:
            who = channel.unary_unary("/t.T/Who")
            # A call outliving the connection's age still completes (no grace limit: long streams survive).
            assert who(b"", timeout=10, wait_for_ready=True) == b"s"
            time.sleep(0.5)
            assert who(b"", timeout=10, wait_for_ready=True) == b"s"
        # The server closed the first connection: the second call came on a new one (new client port).
        assert len(seen) == 2 and seen[0] != seen[1], seen
    finally:
        server.stop(0)
