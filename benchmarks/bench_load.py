"""Load and fault figures for the router, all four services as separate processes.

    python benchmarks/bench_load.py load  --clients 50 --duration 60     # many small concurrent callers
    python benchmarks/bench_load.py mixed --stream-n 100000 --small 5    # 5 small callers beside one big stream
    python benchmarks/bench_load.py outage --outage 60                   # judge down 60 s: recovery time
    python benchmarks/bench_load.py all --duration 60 --stream-n 100000 --outage 60

Stack: ``hybridpref serve`` x 4 (fast tagger, replay judge, default predictor bundle), loopback.
Small calls: ``RouteInstances`` of ``--batch`` real instances (greedy, 25%). Prints throughput, p50/p99
latency, errors by status code and the router's RSS. Instances are real pairs from ``--data-dir``
(default ``<repo>/../shared/data``), cycled with fresh ids.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import POOLS  # noqa: E402

from hybridpref.cli.stack import SERVICES, wait_serving  # noqa: E402
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc  # noqa: E402
from hybridpref_client.core.convert import instances_to_proto  # noqa: E402

PORT_BASE = 47400
ROUTER_SERVICE = "hybridpref.v1.RouterService"


class Stack:
    """The four services, each its own ``hybridpref serve`` process (one can be killed and restarted)."""

    def __init__(self, env: dict[str, str]):
        self.ports = {"router": PORT_BASE, "tagger": PORT_BASE + 1, "judge": PORT_BASE + 2, "predictor": PORT_BASE + 3}
        self.env = dict(
            os.environ,
            **env,
            **{f"HYBRIDPREF_{n.upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in self.ports.items() if n != "router"},
        )
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "serve",
            name,
            "--port",
            str(self.ports[name]),
            "--metrics-port",
            "-1",
        ]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up(self) -> None:
        for name in SERVICES:
            self.start(name)
        for name in SERVICES:
            if not wait_serving(self.address(name), 300):
                raise SystemExit(f"{name} did not become SERVING")
        wait_serving(self.address("router"), 30, ROUTER_SERVICE)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def down(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def router_rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the router process."""
        values = {}
        for line in Path(f"/proc/{self.procs['router'].pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
        return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def load_pool(data_dir: Path, n: int) -> list:
    import bench_e2e
    from bench_e2e import load_instances

    bench_e2e.DATA = data_dir
    return load_instances(n)


def small_request(instances, start: int, batch: int) -> router_pb2.RouteInstancesRequest:
    chunk = [instances[(start + k) % len(instances)] for k in range(batch)]
    msgs = instances_to_proto(chunk)
    for k, m in enumerate(msgs):
        m.id = f"s{start}-{k}"
    return router_pb2.RouteInstancesRequest(
        instances=msgs,
        config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25), strategy="greedy", replay_judge="bench"),
    )


async def small_client(
    address: str, instances, batch: int, stop: asyncio.Event, latencies: list, codes: collections.Counter, offset: int
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        k = offset
        while not stop.is_set():
            request = small_request(instances, k * batch, batch)
            k += 1
            t = time.perf_counter()
            try:
                await stub.RouteInstances(request, timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            latencies.append(time.perf_counter() - t)


def summary(label: str, latencies: list, codes: collections.Counter, seconds: float, batch: int) -> dict:
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    ok = codes.get("OK", 0)
    out = {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "calls": int(sum(codes.values())),
        "errors": {c: n for c, n in codes.items() if c != "OK"},
    }
    print(
        f"{label}: {sum(codes.values())} calls in {seconds:.0f} s = {ok / seconds:.1f} calls/s, "
        f"{ok * batch / seconds:.0f} instances/s; p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms; "
        f"errors by code {out['errors'] or 'none'}"
    )
    return out


async def run_small(address, instances, clients: int, seconds: float, batch: int, label: str) -> dict:
    stop, latencies, codes = asyncio.Event(), [], collections.Counter()
    tasks = [
        asyncio.create_task(small_client(address, instances, batch, stop, latencies, codes, 1000 * i)) for i in range(clients)
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return summary(label, latencies, codes, seconds, batch)


def cmd_load(args, stack: Stack, instances) -> None:
    out = asyncio.run(
        run_small(
            stack.address("router"),
            instances,
            args.clients,
            args.duration,
            args.batch,
            f"load: {args.clients} clients x {args.duration:.0f} s, {args.batch} instances/call",
        )
    )
    rss, peak = stack.router_rss_mb()
    print(f"  router RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")
    if out["errors"]:
        print("  TARGET MISSED: errors under load")


async def _mixed(args, stack: Stack, instances, big) -> None:
    address = stack.address("router")
    idle = await run_small(address, instances, args.small, args.idle, args.batch, f"mixed/idle: {args.small} small clients")
    stop, latencies, codes = asyncio.Event(), [], collections.Counter()
    tasks = [
        asyncio.create_task(small_client(address, instances, args.batch, stop, latencies, codes, 5000 * i))
        for i in range(args.small)
    ]
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def messages():
            yield router_pb2.RouteInstancesStreamRequest(
                config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25), strategy="greedy", replay_judge="bench")
            )
            for s in range(0, len(big), 500):
                yield router_pb2.RouteInstancesStreamRequest(
                    chunk=router_pb2.InstanceChunk(instances=instances_to_proto(big[s : s + 500]))
                )

        decisions, stream_code = 0, "OK"
        try:
            async for reply in stub.RouteInstancesStream(messages(), timeout=3600):
                decisions += len(reply.decisions.decisions)
        except grpc.aio.AioRpcError as exc:
            stream_code = exc.code().name
    wall = time.perf_counter() - start
    stop.set()
    await asyncio.gather(*tasks)
    print(
        f"mixed/stream: {len(big)} instances in {wall:.1f} s ({len(big) / wall:.0f}/s), {decisions} decisions, code {stream_code}"
    )
    during = summary(f"mixed/during: {args.small} small clients beside the stream", latencies, codes, wall, args.batch)
    rss, peak = stack.router_rss_mb()
    ratio = during["p99_ms"] / idle["p99_ms"]
    print(
        f"  small clients' p99 under the stream / idle p99 = {ratio:.2f} (target <= 2); router RSS {rss:.0f} MiB, peak {peak:.0f} MiB"
    )


def cmd_mixed(args, stack: Stack, instances) -> None:
    big = load_pool(args.data_dir, args.stream_n)
    asyncio.run(_mixed(args, stack, instances, big))


def router_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=1).status
            )
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def route_ok(address: str, instances) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).RouteInstances(small_request(instances, 0, 8), timeout=5)
            return True
        except grpc.RpcError:
            return False


def cmd_outage(args, stack: Stack, instances) -> None:
    router = stack.address("router")
    assert route_ok(router, instances)
    stack.kill("judge")
    t0 = time.perf_counter()
    while router_serving(router) and time.perf_counter() - t0 < 30:
        time.sleep(0.1)
    noticed = time.perf_counter() - t0
    failing = not route_ok(router, instances)
    time.sleep(max(0.0, args.outage - (time.perf_counter() - t0)))
    stack.start("judge")
    if not wait_serving(stack.address("judge"), 120):
        raise SystemExit("judge did not come back")
    back = time.perf_counter()
    while not route_ok(router, instances) and time.perf_counter() - back < 120:
        time.sleep(0.1)
    routing = time.perf_counter() - back
    while not router_serving(router) and time.perf_counter() - back < 120:
        time.sleep(0.1)
    ready = time.perf_counter() - back
    print(
        f"outage: judge killed for {args.outage:.0f} s: router NOT_SERVING after {noticed:.1f} s "
        f"(routing failed meanwhile: {failing}); after the judge was SERVING again: routing OK in {routing:.1f} s, "
        f"router SERVING in {ready:.1f} s (target <= 5 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["load", "mixed", "outage", "all"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")),
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=10, help="instances per small call")
    parser.add_argument("--small", type=int, default=5, help="small clients beside the stream")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of the small clients alone (idle p99)")
    parser.add_argument("--stream-n", type=int, default=100_000)
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    missing = [p for p in POOLS if not (args.data_dir / p / "pairs.jsonl").exists()]
    if missing:
        raise SystemExit(f"no data under {args.data_dir} ({missing}); pass --data-dir")
    env = {
        "HYBRIDPREF_TAGGER_PROFILE": "fast",
        "HYBRIDPREF_JUDGE_BACKEND": "replay",
        "HYBRIDPREF_JUDGE_REPLAY_KEY": "bench",
        "HYBRIDPREF_LOG_LEVEL": "WARNING",
    }
    instances = load_pool(args.data_dir, 2000)
    stack = Stack(env)
    print(f"bench_load {args.phase}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        stack.up()
        phases = {"load": cmd_load, "mixed": cmd_mixed, "outage": cmd_outage}
        for name in phases if args.phase == "all" else [args.phase]:
            phases[name](args, stack, instances)
    finally:
        stack.down()


if __name__ == "__main__":
    main()
