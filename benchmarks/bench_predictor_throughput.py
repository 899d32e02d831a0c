"""ScoreMixes throughput: a quadratic PPM over the full 90-tag vocabulary, in process.

Compares, in the same run and on the same inputs:
  * ``Predictor.score`` (validation + float32 copy + onnxruntime, what the servicer calls),
  * a bare onnxruntime ``session.run`` on a ready float32 batch,
  * the same quadratic form in numpy (float64 and float32).
Target: >= 1,000,000 vectors/s in process on 2 cores.

    .venv/bin/python benchmarks/bench_predictor_throughput.py [--bundle DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def best_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    from hybridpref.common.runtime import cpu_limit
    from hybridpref.common.vocabulary import NUM_TAGS
    from hybridpref.predictor.core import Predictor, default_bundle_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(default_bundle_path()))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pred = Predictor(args.bundle)
    bias, w, q = pred.quadratic_form()
    session = pred._state.session  # bare session, for the overhead figure only
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {platform.processor() or platform.machine()}, cpu_limit={cpu_limit()}, "
          f"os.cpu_count={os.cpu_count()}, bundle {pred.info().bundle_version} ({pred.info().model_kind})")
    print("| batch | Predictor.score (ORT) | bare ORT run | numpy f64 | numpy f32 | ORT/numpy f64 |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    pool = 500
    tags = (rng.random((pool, NUM_TAGS)) < 0.1).astype(np.float64)
    q32, w32 = q.astype(np.float32), w.astype(np.float32)
    for m in (1_000, 10_000, 100_000, 1_000_000):
        routed = (rng.random((min(m, 10_000), pool)) < rng.random((min(m, 10_000), 1))).astype(np.float64)
        counts = np.tile(routed @ tags, (max(1, m // 10_000), 1))[:m]
        c32 = counts.astype(np.float32)
        size = np.array([pool], np.float32)

        def np64() -> np.ndarray:
            x = counts / pool
            return bias + np.einsum("mv,mv->m", x @ q + w, x)

        def np32() -> np.ndarray:
            x = c32 / np.float32(pool)
            return np.float32(bias) + np.einsum("mv,mv->m", x @ q32 + w32, x)

        r_pred = best_rate(lambda: pred.score(counts, pool), m, args.repeats)
        r_bare = best_rate(lambda: session.run(["score"], {"counts": c32, "pool_size": size}), m, args.repeats)
        r_64 = best_rate(np64, m, args.repeats)
        r_32 = best_rate(np32, m, args.repeats)
        diff = np.max(np.abs(pred.score(counts, pool) - np64()))
        assert diff <= 1e-5, diff
        print(f"| {m:,} | {r_pred:,.0f}/s | {r_bare:,.0f}/s | {r_64:,.0f}/s | {r_32:,.0f}/s | {r_pred / r_64:.2f} |")


if __name__ == "__main__":
    main()
