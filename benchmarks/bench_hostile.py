"""The hostile test's failures F1-F4 (reviews/hostile-test-2026-12-06.md; issue 18 items 4-7), measured
against a real ``hybridpref serve router`` process with API keys.

    python benchmarks/bench_hostile.py [--unauth 32] [--auth 8] [--million 3] [--idle-streams 256]

The router runs alone (its backends point at a closed port: a call that passes the key check and the
limits ends UNAVAILABLE at the tagger, after its request was decoded and converted), so every figure is
the router's own cost. Prints, per case, the status codes and the router's resident memory (VmRSS,
sampled every 20 ms): F4 unauthenticated 60 MB requests; F4 authenticated ones (memory given back
after); F2 1,000,000-instance requests; F1 many bad rows (trailer size); F3 silent streams from one
vendor while another vendor and the health check call. The CI versions are tests/server/test_hostile.py.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridpref.cli.stack import wait_serving
from hybridpref.server.auth import add_vendor
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc

ROUTE = "/hybridpref.v1.RouterService/RouteInstances"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


class Peak:
    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, rss_mb(pid), threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def raw(channel: grpc.Channel):
    return channel.unary_unary(ROUTE, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def attack(address: str, body: bytes, n: int, metadata=()) -> tuple[collections.Counter, float]:
    options = [("grpc.max_send_message_length", 256 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = raw(channel)

        def one(_):
            try:
                call(body, timeout=300, metadata=metadata)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            codes = collections.Counter(pool.map(one, range(n)))
    return codes, time.perf_counter() - start


def sixty_mb() -> bytes:
    big = common_pb2.PreferenceInstance(prompt="p" * 200_000, response_a="a" * 200_000, response_b="b" * 200_000)
    request = router_pb2.RouteInstancesRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25)))
    for i in range(100):
        request.instances.add().CopyFrom(big)
        request.instances[-1].id = f"i{i}"
    return request.SerializeToString()


def million() -> bytes:
    inst = common_pb2.PreferenceInstance(id="x", prompt="p", response_a="a", response_b="b").SerializeToString()
    config = router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25)).SerializeToString()
    return (bytes([0x0A, len(inst)]) + inst) * 1_000_000 + bytes([0x12, len(config)]) + config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unauth", type=int, default=32, help="concurrent unauthenticated 60 MB requests")
    parser.add_argument("--auth", type=int, default=8, help="concurrent authenticated 60 MB requests")
    parser.add_argument("--million", type=int, default=3, help="concurrent 1,000,000-instance requests")
    parser.add_argument("--idle-streams", type=int, default=256, help="silent streams from one vendor, over 4 connections")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    keys = tmp / "keys.json"
    greedy, beta = add_vendor(keys, "greedy"), add_vendor(keys, "beta")
    port, dead = free_port(), free_port()
    env = dict(
        os.environ,
        HYBRIDPREF_API_KEYS_FILE=str(keys),
        HYBRIDPREF_LOG_LEVEL="WARNING",
        **{f"HYBRIDPREF_{n}_ADDRESS": f"127.0.0.1:{dead}" for n in ("TAGGER", "JUDGE", "PREDICTOR")},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridpref.cli.main", "serve", "router", "--port", str(port), "--metrics-port", "-1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    print(
        f"bench_hostile: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    try:
        wait_serving(address, 60)
        body = sixty_mb()
        as_greedy = (("authorization", f"Bearer {greedy}"),)
        for label, n, md in (("F4 unauthenticated", args.unauth, ()), ("F4 authenticated", args.auth, as_greedy)):
            before = rss_mb(proc.pid)
            with Peak(proc.pid) as peak:
                codes, seconds = attack(address, body, n, md)
            time.sleep(2)
            print(
                f"{label}: {n} x {len(body) / 1e6:.0f} MB: {dict(codes)} in {seconds:.1f} s; router RSS {before:.0f} -> peak "
                f"{peak.peak:.0f} MiB, {rss_mb(proc.pid):.0f} MiB 2 s after"
            )
        body = million()
        codes, seconds = attack(address, body, args.million, as_greedy)
        print(f"F2 1,000,000 instances: {args.million} concurrent x {len(body) / 1e6:.0f} MB: {dict(codes)} in {seconds:.1f} s")
        for n in (400, 10_000, 20_000):
            rows = [common_pb2.PreferenceInstance(id=f"r{i}", prompt="q", response_a=" ", response_b="4") for i in range(n)]
            request = router_pb2.RouteInstancesRequest(
                instances=rows, config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25))
            )
            with grpc.insecure_channel(address) as channel:
                try:
                    router_pb2_grpc.RouterServiceStub(channel).RouteInstances(request, timeout=60, metadata=as_greedy)
                    code, trailer = "OK", 0
                except grpc.RpcError as exc:
                    code, trailer = exc.code().name, sum(len(k) + len(v) for k, v in exc.trailing_metadata() or ())
            print(f"F1 {n} bad rows: {code}, trailing metadata {trailer} bytes (gRPC's limit 16,384)")
        release = threading.Event()
        # Own connections (gRPC Python shares one connection between channels of a process by default).
        own = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.insecure_channel(address, options=own) for _ in range(4)]

        def silent():
            yield router_pb2.RouteInstancesStreamRequest(config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25)))
            release.wait(120)

        calls = [
            router_pb2_grpc.RouterServiceStub(channels[k % 4]).RouteInstancesStream(silent(), metadata=as_greedy)
            for k in range(args.idle_streams)
        ]
        time.sleep(3)
        refused = collections.Counter(c.code().name for c in calls if c.done())
        with grpc.insecure_channel(address, options=own) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            probe = router_pb2.RouteInstancesRequest(
                instances=[common_pb2.PreferenceInstance(id="b", prompt="q", response_a="a", response_b="b")],
                config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5)),
            )
            try:
                router_pb2_grpc.RouterServiceStub(channel).RouteInstances(
                    probe, timeout=10, metadata=(("authorization", f"Bearer {beta}"),)
                )
                other = "OK"
            except grpc.RpcError as exc:
                other = exc.code().name
        open_now = sum(not c.done() for c in calls)
        start = time.monotonic()
        while any(not c.done() for c in calls) and time.monotonic() - start < 120:
            time.sleep(0.5)
        closed = collections.Counter(c.code().name for c in calls)
        print(
            f"F3 {args.idle_streams} silent streams (4 connections, one vendor): {open_now} admitted, refused {dict(refused)}; "
            f"another vendor's call -> {other} (UNAVAILABLE = let through to the absent tagger); main-port health "
            f"{health_pb2.HealthCheckResponse.ServingStatus.Name(health)}; all ended within {time.monotonic() - start:.0f} s "
            f"more: {dict(closed)}"
        )
        release.set()
        for ch in channels:
            ch.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
