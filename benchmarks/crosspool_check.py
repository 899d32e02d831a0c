"""Quick cross-pool check of routing strategies by label accuracy (the eval harness is the judge).

    python benchmarks/crosspool_check.py --data-dir /work/shared/data [--budget 0.25]

For each held-out pool: fit the expected-correction model on the other pools, route the held-out
pool at the budget, and score the resulting labels (human where routed, the LM judge's elsewhere)
against the reference (rows with reference 0 left out; a tie counts wrong). Prints accuracy of
random (mean of 20 seeds), oracle (LM wrong and human right first), judge_doubt, expected_gain, and
the share of the oracle's gain over random each recovers, with a 95% prompt-group bootstrap interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybridpref.offline.bundle import correction_fit
from hybridpref.offline.pools import DEFAULT_JUDGES, default_data_dir, load_pool
from hybridpref.router.budget import Budget, resolve_budget
from hybridpref.router.strategies import route


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--boot", type=int, default=500)
    a = ap.parse_args()
    pools = {n: load_pool(a.data_dir / n) for n in DEFAULT_JUDGES}
    for name, pool in pools.items():
        model = correction_fit.fit_for_pools([p for k, p in pools.items() if k != name], seed=0)
        sig = pool.signals()
        gain = correction_fit.expected_gain_for_pool(model, pool)
        n = len(pool)
        budget = resolve_budget(Budget.fraction(a.budget), n, None)
        masks = {
            "random": [route("random", np.zeros((n, 1), np.uint8), budget, scorer=None, seed=s).human_mask for s in range(20)]
        }
        right_lm, right_h = sig.label == pool.reference, pool.human == pool.reference
        oracle = (~right_lm & right_h) * 2.0 + (~right_lm) * 1.0  # fixable first, then any LM error
        masks["oracle"] = [
            route("expected_gain", np.zeros((n, 1), np.uint8), budget, scorer=None, seed=0, expected_gain=oracle / 3).human_mask
        ]
        masks["judge_doubt"] = [
            route("judge_doubt", np.zeros((n, 1), np.uint8), budget, scorer=None, seed=0, signals=sig).human_mask
        ]
        masks["expected_gain"] = [
            route("expected_gain", np.zeros((n, 1), np.uint8), budget, scorer=None, seed=0, expected_gain=gain).human_mask
        ]
        keep = pool.reference != 0
        correct = {k: np.mean([np.where(m, right_h, right_lm) for m in ms], axis=0) for k, ms in masks.items()}
        groups = np.unique(pool.groups[keep], return_inverse=True)[1]
        rng = np.random.default_rng(0)
        sums = {k: np.bincount(groups, v[keep]) for k, v in correct.items()}
        counts = np.bincount(groups)
        boots = {k: [] for k in correct}
        for _ in range(a.boot):
            w = np.bincount(rng.integers(0, len(counts), len(counts)), minlength=len(counts))
            acc = {k: (w * s).sum() / (w * counts).sum() for k, s in sums.items()}
            for k in ("judge_doubt", "expected_gain"):
                boots[k].append((acc[k] - acc["random"]) / max(acc["oracle"] - acc["random"], 1e-9))
        accs = {k: float(v[keep].mean()) for k, v in correct.items()}
        line = " ".join(f"{k} {v:.3f}" for k, v in accs.items())
        rec = " ".join(
            f"{k} recovers {np.mean(boots[k]):.2f} [{np.percentile(boots[k], 2.5):.2f}, {np.percentile(boots[k], 97.5):.2f}]"
            for k in ("judge_doubt", "expected_gain")
        )
        print(f"{name:20s} budget {a.budget:.0%}: {line} | {rec}")


if __name__ == "__main__":
    main()
