"""End-to-end timings through all four services, each its own process (``hybridpref up``).

    python benchmarks/bench_e2e.py startup                      # time for `hybridpref up` to reach all-SERVING
    python benchmarks/bench_e2e.py route --n 10000 --strategy random --tagger-profile fast --judge-backend replay
    python benchmarks/bench_e2e.py route --n 1000 --strategy greedy   # default models (tagger default, embedded judge)
    python benchmarks/bench_e2e.py stream --n 100000                  # RouteInstancesStream; the router's peak memory
    python benchmarks/bench_e2e.py stream --n 100000 --strategy hybrid --tagger-profile default --judge-backend learned \
        --pools llmbar --bundle benchmarks/lopo_bundles/without-llmbar   # the default path on data the bundle never saw

Instances are real pairs from ../shared/data (mtbench_human_gpt4, pandalm, llmbar), cycled with fresh ids
to reach --n. For the replay judge each row's first recorded LM label is stored under the key "bench".
Prints wall time, instances/s and the router's per-stage split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from hybridpref.cli.stack import SERVICES, up_ports, wait_serving
from hybridpref_client import RouterClient
from hybridpref_client.core.instances import PreferenceInstance, instance_from_row

DATA = Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
POOLS = ("mtbench_human_gpt4", "pandalm", "llmbar")
PORT_BASE = 47000


def load_instances(n: int, pools: tuple[str, ...] = POOLS) -> list[PreferenceInstance]:
    rows = []
    for pool in pools:
        with open(DATA / pool / "pairs.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                recorded = next(
                    (v for v in (row.get("lm_labels") or {}).values() if v in ("A", "B", "tie", "tie_inconsistent")), None
                )
                texts = [row.get(k) for k in ("prompt", "response_a", "response_b")]
                if recorded is None or not all(isinstance(t, str) and t.strip() for t in texts):
                    continue  # a few rows carry no usable text (e.g. a boolean response)
                row["lm_labels"] = {"bench": recorded}
                rows.append(row)
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)], id=f"bench-{i}")
        out.append(instance_from_row(row))
    return out


def start_up(env_overrides: dict[str, str]) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, **env_overrides)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridpref.cli.main", "up", "--port-base", str(PORT_BASE)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    if "all SERVING" not in line:
        proc.kill()
        raise SystemExit(f"hybridpref up failed: {line!r}")
    return proc, time.perf_counter() - start


def stop_up(proc: subprocess.Popen) -> float:
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return time.perf_counter() - start


def cmd_startup(args) -> None:
    ports, _ = up_ports(PORT_BASE)
    for label, env in (
        ("default models", {}),
        ("fast tagger + replay judge", {"HYBRIDPREF_TAGGER_PROFILE": "fast", "HYBRIDPREF_JUDGE_BACKEND": "replay"}),
    ):
        times = []
        for _ in range(args.repeat):
            proc, ready_s = start_up(env)
            assert all(wait_serving(f"127.0.0.1:{ports[s]}", 5) for s in SERVICES)
            stop_s = stop_up(proc)
            times.append((ready_s, stop_s))
        best = min(t[0] for t in times)
        print(
            f"up -> all SERVING [{label}]: best {best:.1f} s of {args.repeat} "
            f"({', '.join(f'{t[0]:.1f}' for t in times)}); SIGTERM -> all exited: {max(t[1] for t in times):.1f} s"
        )


def _bundle_env(args) -> dict[str, str]:
    """The stack serves ``--bundle`` instead of the packaged bundle (e.g. a leave-one-pool-out bundle, so that
    ``--pools`` are data the bundle never saw, as a vendor's are)."""
    return {"HYBRIDPREF_BUNDLE_PATH": str(Path(args.bundle).resolve()), "HYBRIDPREF_BUNDLE_WATCH_S": "0"} if args.bundle else {}


def cmd_route(args) -> None:
    instances = load_instances(args.n, tuple(args.pools.split(",")))
    env = {
        "HYBRIDPREF_TAGGER_PROFILE": args.tagger_profile,
        "HYBRIDPREF_JUDGE_BACKEND": args.judge_backend,
        "HYBRIDPREF_JUDGE_REPLAY_KEY": "bench",
        "HYBRIDPREF_MAX_BATCH": str(max(args.n, 20000)),
        **_bundle_env(args),
    }
    proc, ready_s = start_up(env)
    try:
        with RouterClient(f"127.0.0.1:{PORT_BASE}", timeout_s=args.timeout) as client:
            start = time.perf_counter()
            result = client.route(instances, fraction=args.budget, strategy=args.strategy, seed=0)
            wall = time.perf_counter() - start
    finally:
        stop_up(proc)
    stages = result.summary["stage_seconds"]
    print(
        f"RouteInstances n={args.n} strategy={args.strategy} tagger={args.tagger_profile} judge={args.judge_backend} "
        f"budget={args.budget}: {wall:.1f} s wall, {args.n / wall:.0f} instances/s (stack ready in {ready_s:.1f} s)"
    )
    print(
        "  stages: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(stages.items()))
        + f"; other (transport, conversion) {wall - sum(stages.values()):.2f} s"
    )
    domain = result.summary.get("domain") or {}
    print(
        f"  domain: {'in' if domain.get('in_domain') else 'out of'} the PPM's domain (distance {domain.get('distance', float('nan')):.3f} "
        f"vs {domain.get('threshold', float('nan')):.3f}); bundle {result.summary.get('bundle_version')}"
    )
    print(
        f"  human {result.summary['human_count']}, LM {result.summary['lm_count']}; "
        f"correction model {result.summary.get('correction_model_version') or '-'}"
    )


def process_peak_mb(pattern: str) -> float:
    """Peak resident memory (VmHWM) of the process whose command line contains ``pattern``."""
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if pattern in status.read_bytes().replace(b"\0", b" ").decode():
                for line in (status.parent / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    return float("nan")


def cmd_stream(args) -> None:
    env = {
        "HYBRIDPREF_TAGGER_PROFILE": args.tagger_profile,
        "HYBRIDPREF_JUDGE_BACKEND": args.judge_backend,
        "HYBRIDPREF_JUDGE_REPLAY_KEY": "bench",
        **_bundle_env(args),
    }
    proc, _ = start_up(env)
    router = f"serve router --port {PORT_BASE}"
    try:
        with RouterClient(f"127.0.0.1:{PORT_BASE}", timeout_s=args.timeout) as client:
            for n in (args.n // 10, args.n):
                instances = load_instances(n, tuple(args.pools.split(",")))
                start = time.perf_counter()
                result = client.route_stream(instances, fraction=args.budget, strategy=args.strategy, seed=0)
                wall = time.perf_counter() - start
                text_mb = sum(len(i.prompt) + len(i.response_a) + len(i.response_b) for i in instances) / 2**20
                stages = result.summary["stage_seconds"]
                print(
                    f"RouteInstancesStream n={n} strategy={args.strategy} tagger={args.tagger_profile} judge={args.judge_backend}: "
                    f"{wall:.1f} s, {n / wall:.0f} instances/s; {len(result.decisions)} decisions; texts sent {text_mb:.0f} MiB; "
                    f"router peak RSS so far {process_peak_mb(router):.0f} MiB"
                )
                domain = result.summary.get("domain") or {}
                print(
                    "  stages: "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(stages.items()))
                    + f"; correction model {result.summary.get('correction_model_version') or '-'}; "
                    f"{'in' if domain.get('in_domain') else 'out of'} the PPM's domain ({domain.get('distance', float('nan')):.3f})"
                )
                del instances, result
    finally:
        stop_up(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("startup")
    s.add_argument("--repeat", type=int, default=2)
    r = sub.add_parser("route")
    r.add_argument("--n", type=int, default=10000)
    r.add_argument("--strategy", default="random")
    r.add_argument("--budget", type=float, default=0.25)
    r.add_argument("--tagger-profile", default="default")
    r.add_argument("--judge-backend", default="embedded")
    r.add_argument("--timeout", type=float, default=7200)
    r.add_argument("--pools", default=",".join(POOLS), help="pools the instances are cycled from")
    r.add_argument("--bundle", default=None, help="bundle folder the stack serves (default: the packaged one)")
    st = sub.add_parser("stream")
    st.add_argument("--n", type=int, default=100000)
    st.add_argument("--strategy", default="greedy")
    st.add_argument("--budget", type=float, default=0.25)
    st.add_argument("--timeout", type=float, default=3600)
    st.add_argument("--pools", default=",".join(POOLS), help="pools the instances are cycled from")
    st.add_argument("--bundle", default=None, help="bundle folder the stack serves (default: the packaged one)")
    st.add_argument("--tagger-profile", default="fast")
    st.add_argument("--judge-backend", default="replay")
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M')}")
    {"startup": cmd_startup, "route": cmd_route, "stream": cmd_stream}[args.cmd](args)


if __name__ == "__main__":
    main()
