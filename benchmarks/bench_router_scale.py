"""Benchmark 1 (issues 6, 10): route 1,000,000 instances in process at 25%, on the served path.

``served`` (the default) times exactly what the router runs after tagging and the judge-first pass
for its default strategy (``strategies.DEFAULT_STRATEGY``): the expected-correction model on the
feature matrix (onnxruntime, ``CorrectionRunner.probabilities``), budget resolution and
``hybridpref.router.core.decide`` (domain check, the strategy, the summary with intervals), on a
``RoutingModel`` built by ``RoutingModel.from_data`` as from a ``GetRoutingModel`` answer.
Explanations (top tags per instance, run by the service afterwards) are timed separately.
Feature extraction from the texts is not included (it runs per judge slice, next to the judge).
Other names in ``--strategies`` time ``strategies.route`` alone, as before (topk, greedy, ...).
For those, issue 10 adds ``hybrid`` (the served default), ``expected_gain`` and ``judge_doubt``: for the first
two the timed call includes the expected-correction model (the default bundle's ``correction.onnx``
through onnxruntime) on an (n, F) synthetic feature matrix, then ``route()``; ``hybrid`` runs with
``ppm_in_domain=True`` (its slowest path: the PPM's solo gains break ties). Synthetic judge signals:
12% no verdict, 8% order flips, agreement in {0, 0.5, 1}.

Targets on the 2-core machine: 3 s wall and 2 GB peak memory per strategy.

The tag matrix is synthetic but shaped like the tagger's output: each of the 9 lexical
measures sets exactly one of its 3 bins (skewed like real data), every analyzer dimension
with a single answer sets exactly one option, subjects are multi-label with a Zipf-like
popularity. The PPM is a random quadratic model over the 90 tags (routing time does not
depend on its coefficients). Each strategy runs in a fresh subprocess so that its peak RSS
is its own; wall time is the median of ``--repeats`` runs of ``route()`` (budget resolution
included, tag generation excluded). Peak memory is reported two ways: the routing call's
own numpy/Python allocations (tracemalloc, on top of the input) and the process peak RSS.

    .venv/bin/python benchmarks/bench_router_scale.py            # 1,000,000 instances
    .venv/bin/python benchmarks/bench_router_scale.py --n 100000 # smaller
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from hybridpref.common.vocabulary import (
    ANALYZER_DIMENSIONS,
    BINS,
    LEXICAL_MEASURES,
    MULTI_LABEL_DIMENSIONS,
    NUM_TAGS,
    TAG_INDEX,
    analyzer_tag,
    lexical_tag,
)

# Bin probabilities (low, mid, high) per lexical measure; lengths are ranks in a fixed reference -> thirds.
LEXICAL_BIN_P = {
    "bertscore": (0.15, 0.55, 0.30),
    "bertscore_length": (0.45, 0.40, 0.15),
    "cosine_sim": (0.10, 0.30, 0.60),
    "entity_sim": (0.55, 0.25, 0.20),
    "rouge": (0.35, 0.50, 0.15),
}
SINGLE_P = {
    "expertise_level": (0.55, 0.33, 0.12),
    "open_endedness": (0.15, 0.25, 0.35, 0.25),
    "safety_concern": (0.80, 0.12, 0.05, 0.03),
    "complexity_of_intents": (0.50, 0.35, 0.15),
}
BINARY_P = {"languages": 0.95, "type_of_in_context_material": 0.20, "format_constraints": 0.30}


def synthetic_tags(n: int, seed: int) -> np.ndarray:
    """(n, 90) uint8 tag matrix with the tagger's structure (see module docstring)."""
    rng = np.random.default_rng(seed)
    tags = np.zeros((n, NUM_TAGS), dtype=np.uint8)
    rows = np.arange(n)
    for m in LEXICAL_MEASURES:
        p = LEXICAL_BIN_P.get(m, (1 / 3, 1 / 3, 1 / 3))
        b = rng.choice(3, size=n, p=p)
        tags[rows, TAG_INDEX[lexical_tag(m, BINS[0])] + b] = 1
    for dim, p in SINGLE_P.items():
        k = rng.choice(len(p), size=n, p=p)
        tags[rows, TAG_INDEX[analyzer_tag(dim, ANALYZER_DIMENSIONS[dim][0])] + k] = 1
    for dim, p in BINARY_P.items():
        tags[:, TAG_INDEX[analyzer_tag(dim, ANALYZER_DIMENSIONS[dim][0])]] = rng.random(n) < p
    subjects = ANALYZER_DIMENSIONS["subject_of_expertise"]
    assert "subject_of_expertise" in MULTI_LABEL_DIMENSIONS
    popularity = 1.0 / np.arange(1, len(subjects) + 1) ** 1.1
    popularity = rng.permutation(popularity / popularity.sum())
    first = TAG_INDEX[analyzer_tag("subject_of_expertise", subjects[0])]
    n_subjects = rng.choice([1, 2, 3], size=n, p=[0.6, 0.3, 0.1])
    for j in range(3):
        pick = rng.choice(len(subjects), size=n, p=popularity)
        sel = n_subjects > j
        tags[rows[sel], first + pick[sel]] = 1
    return tags


def run_one(strategy: str, n: int, fraction: float, repeats: int, seed: int, quality_rounds: int = 0) -> dict[str, float]:
    from hybridpref.router.budget import Budget, resolve_budget
    from hybridpref.router.scoring import QuadraticScorer, mix_counts
    from hybridpref.router.strategies import route
    from hybridpref.router.summary import ppm_values

    tags = synthetic_tags(n, seed)
    scorer = QuadraticScorer.random(NUM_TAGS, seed=seed + 1)
    extra_kw = _issue10_inputs(strategy, n, seed)
    model = extra_kw.pop("model", None)
    features = extra_kw.pop("features", None)

    def once():
        budget = resolve_budget(Budget.fraction(fraction), n, None)
        if model is not None:
            extra_kw["expected_gain"] = model.expected_gain(features)
        return route(strategy, tags, budget, scorer=scorer, seed=seed, **extra_kw)

    once()  # warm-up: BLAS threads, page faults of the input
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = once()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    once()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    baselines = ppm_values(scorer, tags, result.human_mask, mix_counts(tags, np.ones(n, dtype=bool)))  # as the summary
    baselines["all_lm"] = scorer.bias  # f(0): the summary leaves it out (the same for every batch)
    extra = {}
    if strategy == "greedy" and quality_rounds:
        from hybridpref.router.strategies import GreedyOptions

        fine = route(
            strategy,
            tags,
            resolve_budget(Budget.fraction(fraction), n, None),
            scorer=scorer,
            seed=seed,
            greedy=GreedyOptions(min_rounds=quality_rounds),
        )
        extra = {
            "fine_rounds": quality_rounds,
            "fine_score": fine.predicted_score,
            "overlap_with_fine": float((fine.human_mask & result.human_mask).sum() / max(1, result.human_count)),
        }
    from threadpoolctl import threadpool_info

    return {
        **extra,
        "blas_threads": max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=0),
        "rounds": result.info.get("rounds", 0.0),
        "strategy": strategy,
        "n": n,
        "human": result.human_count,
        "wall_s_median": statistics.median(times),
        "wall_s_min": min(times),
        "cpu_s_median": statistics.median(cpu),
        "route_alloc_peak_mb": (peak - base) / 2**20,
        "input_mb": tags.nbytes / 2**20,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predicted_score": result.predicted_score,
        **{f"predicted_{k}": v for k, v in baselines.items() if k != "chosen"},
    }


def served_model():
    """The default bundle's routing model, built as the router builds it from ``GetRoutingModel``."""
    from hybridpref.predictor.core import Predictor, default_bundle_path
    from hybridpref.router.model import RoutingModel

    return RoutingModel.from_data(Predictor(default_bundle_path()).routing_model())


def served_features(model, n: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic (n, F) correction features; the domain columns drawn around the PPM's training pool,
    so the default strategy takes its in-domain path (the PPM breaks ties: the slower one)."""
    from hybridpref.routing_model.correction import FEATURE_NAMES
    from hybridpref.routing_model.domain import DOMAIN_FEATURES

    x = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    if model.domain is not None:
        stats = next(iter(model.domain.stats.values()))
        for j, name in enumerate(DOMAIN_FEATURES):
            x[:, FEATURE_NAMES.index(name)] = rng.normal(stats["mean"][j], stats["sd"][j], n)
    return x


def run_served(n: int, fraction: float, repeats: int, seed: int) -> dict[str, float]:
    from hybridpref.common.signals import JudgeSignals
    from hybridpref.router.backends import JudgedBatch
    from hybridpref.router.budget import Budget, resolve_budget
    from hybridpref.router.core import Decision, JudgeFirst, _explain, decide
    from hybridpref.router.strategies import DEFAULT_STRATEGY, strategy_spec

    tags = synthetic_tags(n, seed)
    model = served_model()
    rng = np.random.default_rng(seed + 11)
    features = served_features(model, n, rng)
    sign = rng.choice(np.array([-1, 0, 1], np.int8), size=n, p=[0.45, 0.1, 0.45])
    flip = rng.random(n) < 0.1
    judged_batch = JudgedBatch(np.where(sign > 0, 2, np.where(sign < 0, 4, 3)), rng.random(n), flip)
    signals = JudgeSignals(sign, np.full(n, np.nan), flip, np.full(n, np.nan))

    def once():
        p_wrong = model.correction.probabilities(features)
        judged = JudgeFirst(judged_batch, signals, p_wrong)
        budget = resolve_budget(Budget.fraction(fraction), n, None)
        return decide(model, strategy_spec(DEFAULT_STRATEGY), tags, budget, judged, features, seed=seed)

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result, summary = once()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    decisions = [Decision(id="", human=bool(h)) for h in result.human_mask]
    _explain(model, tags, result.human_mask, 3, decisions)
    explain_s = time.perf_counter() - t0
    mixes = {m.mix: m for m in summary.mixes}
    chosen = mixes["chosen"]
    return {
        "strategy": f"served:{DEFAULT_STRATEGY}",
        "n": n,
        "human": result.human_count,
        "wall_s_median": statistics.median(times),
        "wall_s_min": min(times),
        "explain_s": explain_s,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predicted_score": None if chosen.score is None else chosen.score.value,
        "score_note": chosen.score_note,
        "corrections": None if chosen.corrections is None else chosen.corrections.value,
        "in_domain": None if summary.domain is None else summary.domain.in_domain,
        "warnings": len(summary.warnings),
    }


def _issue10_inputs(strategy: str, n: int, seed: int) -> dict:
    """Judge signals, and for expected_gain/hybrid the default bundle's correction model + features."""
    if strategy not in ("expected_gain", "hybrid", "judge_doubt"):
        return {}
    from hybridpref.common.signals import JudgeSignals

    rng = np.random.default_rng(seed + 2)
    label = np.where(rng.random(n) < 0.12, 0, rng.choice([-1, 1], size=n)).astype(np.int8)
    signals = JudgeSignals(label, np.full(n, np.nan), (label == 0) & (rng.random(n) < 0.6), rng.choice([0.0, 0.5, 1.0], size=n))
    if strategy == "judge_doubt":
        return {"signals": signals}
    from hybridpref.predictor.core import default_bundle_path
    from hybridpref.routing_model import bundle as bundle_io
    from hybridpref.routing_model.correction import FEATURE_NAMES, CorrectionModel

    model = CorrectionModel.from_onnx(bundle_io.read_correction(default_bundle_path())[0])
    features = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    features[:, FEATURE_NAMES.index("lm_no_verdict")] = label == 0
    return {"signals": signals, "model": model, "features": features, "ppm_in_domain": strategy == "hybrid"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--strategies", nargs="*", default=["served"], help="served (default strategy, served path) and/or strategy names"
    )
    parser.add_argument(
        "--quality-rounds", type=int, default=256, help="also run greedy with this many rounds and compare (0: skip)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "served":
        print(json.dumps(run_served(args.n, args.fraction, args.repeats, args.seed)))
        return
    if args.child:
        print(json.dumps(run_one(args.child, args.n, args.fraction, args.repeats, args.seed, args.quality_rounds)))
        return
    print(
        f"routing {args.n:,} instances x {NUM_TAGS} tags at {args.fraction:.0%} (median of {args.repeats}; fresh process per strategy)"
    )
    print(
        f"{'strategy':<10} {'human':>9} {'wall s':>8} {'cpu s':>7} {'route alloc MB':>15} {'peak RSS MB':>12} {'pred score':>11} {'all-human':>10} {'all-LM':>8} {'random':>8}"
    )
    for strategy in args.strategies:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            strategy,
            "--n",
            str(args.n),
            "--fraction",
            str(args.fraction),
            "--repeats",
            str(args.repeats),
            "--seed",
            str(args.seed),
            "--quality-rounds",
            str(args.quality_rounds),
        ]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        if strategy == "served":
            print(
                f"{r['strategy']}: {r['human']:,} to humans, wall {r['wall_s_median']:.3f} s (median; min {r['wall_s_min']:.3f}), "
                f"peak RSS {r['process_peak_rss_mb']:.0f} MB; explanations {r['explain_s']:.3f} s more; "
                f"chosen predicted {r['predicted_score']} ({r['score_note'] or 'with interval'}), "
                f"expected corrections {r['corrections']}, in domain {r['in_domain']}, {r['warnings']} warnings"
            )
            continue
        print(
            f"{strategy:<10} {r['human']:>9,} {r['wall_s_median']:>8.3f} {r['cpu_s_median']:>7.3f} {r['route_alloc_peak_mb']:>15.0f} {r['process_peak_rss_mb']:>12.0f} "
            f"{r['predicted_score']:>11.5f} {r['predicted_all_human']:>10.5f} {r['predicted_all_lm']:>8.5f} {r['predicted_random']:>8.5f}"
        )
        if "fine_score" in r:
            print(
                f"{'':<10} greedy with {r['rounds']:.0f} rounds vs {r['fine_rounds']} rounds: predicted {r['predicted_score']:.6f} vs {r['fine_score']:.6f}, "
                f"{r['overlap_with_fine']:.2%} of routed instances in common"
            )
    print("targets: wall <= 3 s, peak memory <= 2048 MB (route() pins BLAS to 1 thread)")


if __name__ == "__main__":
    main()
