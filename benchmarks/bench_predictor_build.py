"""Predictor build figures: proxy-RM candidates per second, PPM 10-fold CV Spearman / RMSE per variant.

Runs the same build as the committed default bundle (pool mtbench_human_gpt4 with GPT-4 labels,
gold = its held-out 20% of question ids, OOD diagnostics) into a temporary folder, or ``--out``.
Tags and embeddings are cached under ~/.cache/hybridpref, so the first run also pays for tagging
(~1,750 instances) and encoding.

    .venv/bin/python benchmarks/bench_predictor_build.py [--candidates 1000] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def default_gold_specs(data: Path = DATA) -> list[str]:
    """The diagnostic (out-of-distribution) gold sets of the default bundle."""
    return [
        f"llmbar_natural_adversarial={data}/llmbar/pairs.jsonl#source~LLMBar/Natural|LLMBar/Adversarial",
        f"hh_rlhf_harmless={data}/hh_rlhf/pairs.jsonl#max=400",
        f"pandalm_unanimous={data}/pandalm/pairs.jsonl#unanimous#max=400",
    ]


def main() -> None:
    from hybridpref.common.runtime import configure_torch_threads, cpu_limit
    from hybridpref.predictor.builder import BuildConfig, build_bundle

    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-diagnostics", action="store_true")
    args = ap.parse_args()
    configure_torch_threads()
    out = args.out or tempfile.mkdtemp(prefix="ppm-bench-")
    config = BuildConfig(pool=str(DATA / "mtbench_human_gpt4" / "pairs.jsonl"), out=out, candidates=args.candidates,
                         seed=args.seed, gold=[] if args.no_diagnostics else default_gold_specs())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, cpu_limit={cpu_limit()}, candidates={args.candidates}, seed={args.seed}")
    r = build_bundle(config, progress=True)
    t = r.timings
    print(f"bundle {r.bundle_version} -> {out}")
    print(f"tagging {t['tag_s']:.0f} s, encoding {t['encode_s']:.0f} s, proxy {t['proxy_s']:.0f} s "
          f"= {t['proxy_candidates_per_s']:.1f} candidates/s ({r.metrics['proxy']['seeds']} seeds each), "
          f"PPM fits {t['ppm_s']:.0f} s, total {t['total_s']:.0f} s")
    print("| variant | CV Spearman (pooled) | CV Spearman (fold mean) | CV RMSE | target std |")
    print("|---|---|---|---|---|")
    for name, v in r.metrics["variants"].items():
        print(f"| {name} | {v['cv_spearman']:.3f} | {v['cv_spearman_fold_mean']:.3f} | {v['cv_rmse']:.4f} | {v['target_std']:.4f} |")
    print(f"served: {r.metrics['chosen_variant']}, ridge alpha {r.metrics['served']['ridge_alpha']:.3g}")
    print("| gold set | all-human acc | all-LM acc | Spearman vs target |")
    print("|---|---|---|---|")
    for name, d in r.metrics["gold_sets"].items():
        print(f"| {name} | {d['all_human']:.3f} | {d['all_lm']:.3f} | {d['spearman_vs_target']:.2f} |")
    print(f"target: Spearman(human share, accuracy) = {r.metrics['target']['spearman_vs_human_fraction']:.2f}")


if __name__ == "__main__":
    main()
