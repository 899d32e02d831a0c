"""Predictor build figures: proxy-RM candidates per second, PPM CV and leave-one-pool-out scores.

Runs the same build as the committed default bundle (pools mtbench_human_gpt4, pandalm and llmbar without
its MT-Bench subset, each with its default LM judge and its own held-out 20% of prompt groups as gold;
HH-RLHF harmless as an out-of-distribution diagnostic) into a temporary folder, or ``--out``. Tags,
embeddings and per-pool simulations are cached under ~/.cache/hybridpref, so only the first run pays
for tagging, encoding and the proxy reward models (``--pools`` picks a subset, e.g. to time one pool).

    .venv/bin/python benchmarks/bench_predictor_build.py [--candidates 600] [--seed 0] [--out DIR] [--lopo-out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
POOLS = ("mtbench_human_gpt4", "pandalm", "llmbar")


def default_gold_specs(data: Path = DATA) -> list[str]:
    """The diagnostic gold sets of the default bundle: only sets outside its training pools (LLMBar Natural /
    Adversarial and PandaLM unanimous rows were dropped when those pools became training pools)."""
    return [f"hh_rlhf_harmless={data}/hh_rlhf/pairs.jsonl#max=400"]


def main() -> None:
    from hybridpref.offline.bundle.builder import BuildConfig, build_bundle
    from hybridpref.server.runtime import configure_torch_threads, cpu_limit

    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=600, help="per pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--lopo-out", default=None)
    ap.add_argument("--no-diagnostics", action="store_true")
    args = ap.parse_args()
    configure_torch_threads()
    out = args.out or tempfile.mkdtemp(prefix="ppm-bench-")
    pools = [f"{p}={DATA / p / 'pairs.jsonl'}" for p in args.pools.split(",")]
    config = BuildConfig(
        pool=pools[0] if len(pools) == 1 else pools,
        out=out,
        candidates=args.candidates,
        seed=args.seed,
        gold=[] if args.no_diagnostics else default_gold_specs(),
        lopo_out=args.lopo_out,
    )
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, cpu_limit={cpu_limit()}, candidates={args.candidates}/pool, seed={args.seed}")
    r = build_bundle(config, progress=True)
    t = r.timings
    print(f"bundle {r.bundle_version} -> {out}; simulations cached: {r.cache_hits}")
    print(
        f"tagging+simulation {t['simulate_s']:.0f} s (encoding {t['encode_s']:.0f} s, proxy {t['proxy_s']:.0f} s "
        f"= {t['proxy_candidates_per_s']:.1f} candidates/s, {r.metrics['proxy']['seeds']} seeds each), "
        f"PPM fits {t['ppm_s']:.0f} s, total {t['total_s']:.0f} s"
    )
    print("| variant | CV Spearman (pooled) | CV Spearman (fold mean) | CV RMSE | target std | within each pool |")
    print("|---|---|---|---|---|---|")
    for name, v in r.metrics["variants"].items():
        by_pool = ", ".join(f"{k} {x:+.2f}" for k, x in v.get("cv_spearman_by_pool", {}).items())
        print(
            f"| {name} | {v['cv_spearman']:.3f} | {v['cv_spearman_fold_mean']:.3f} | {v['cv_rmse']:.4f} | {v['target_std']:.4f} | {by_pool} |"
        )
    print(f"served: {r.metrics['chosen_variant']}, ridge alpha {r.metrics['served']['ridge_alpha']:.3g}")
    print("| held-out pool | Spearman | partial given share | Spearman(share, measured) | centred RMSE | measured std |")
    print("|---|---|---|---|---|---|")
    for name, e in r.metrics["leave_one_pool_out"].get("pools", {}).items():
        print(
            f"| {name} | {e['spearman']:+.3f} | {e['partial_spearman_given_share']:+.3f} | {e['spearman_share_vs_measured']:+.3f} | "
            f"{e['rmse_centred']:.4f} | {e['measured_std']:.4f} |"
        )
    print("| pool | gold set | all-human acc | all-LM acc | Spearman vs target |")
    print("|---|---|---|---|---|")
    for pool, m in r.metrics["pools"].items():
        for name, d in m["gold_sets"].items():
            print(f"| {pool} | {name} | {d['all_human']:.3f} | {d['all_lm']:.3f} | {d['spearman_vs_target']:.2f} |")


if __name__ == "__main__":
    main()
