"""Where the cross-pool routing gain comes from, and where it stops: a per-pool decomposition.

    python benchmarks/routing_ceiling.py [--data-dir ../shared/data] [--budget 0.25]

For each shared pool (its default judge), with the expected-correction model fitted on the *other*
pools (the harness's cross-pool setting, whole pool as one batch):

* rows by the judge's verdict class (order flip / tie or missing / verdict): how many, the share whose
  reference is decisive (not a tie), and the share a human label would fix (LM wrong, human right);
* what the budget buys: routed rows per class, fixes among them, the oracle's fixes;
* AUROC of "LM label wrong" *within verdict rows* for the model and for each single feature: the part
  of the ranking no judge signal decides.

It prints plain tables; nothing is fitted on the pool it describes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybridpref.offline.bundle import correction_fit
from hybridpref.offline.pools import DEFAULT_JUDGES, Pool, default_data_dir, load_pool
from hybridpref.routing_model import correction as corr


def verdict_classes(pool: Pool) -> dict[str, np.ndarray]:
    sig = pool.signals()
    flip = np.asarray(sig.order_flip, dtype=bool)
    label = np.asarray(sig.label)
    return {"order flip": flip, "tie / missing": (label == 0) & ~flip, "verdict": label != 0}


def describe(pool: Pool, gain: np.ndarray, feats: np.ndarray, budget: float) -> None:
    label, ref, human = pool.signals().label, pool.reference, pool.human
    fixable = (ref != 0) & (label != ref) & (human == ref)
    routed = np.zeros(len(pool), dtype=bool)
    k = int(round(budget * len(pool)))
    routed[np.argsort(-gain, kind="stable")[:k]] = True
    print(f"\n## {pool.name} ({len(pool)} rows; budget {budget:.0%} = {k} rows; oracle fixes {min(k, int(fixable.sum()))})\n")
    print("| class | rows | decisive reference | fixable by a human | routed | fixed among routed |")
    print("|---|---|---|---|---|---|")
    for name, m in verdict_classes(pool).items():
        if m.any():
            print(
                f"| {name} | {m.sum()} | {(ref[m] != 0).mean():.2f} | {fixable[m].mean():.2f} | {routed[m].sum()} | {fixable[m & routed].sum()} |"
            )
    verdict = (label != 0) & (ref != 0)
    y = (label != ref)[verdict]
    print(
        f"\nWithin verdict rows ({verdict.sum()}, LM wrong {y.mean():.2f}): model AUROC {correction_fit.auroc(y, gain[verdict]):.3f}"
    )
    singles = {
        n: correction_fit.auroc(y, feats[verdict, j])
        for j, n in enumerate(corr.FEATURE_NAMES)
        if len(np.unique(feats[verdict, j])) > 1
    }
    print(
        "single features (AUROC; 0.5 = no signal, < 0.5 = reversed): "
        + ", ".join(f"{n} {a:.2f}" for n, a in sorted(singles.items(), key=lambda t: -abs(t[1] - 0.5)))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--budget", type=float, default=0.25)
    a = ap.parse_args()
    pools = [load_pool(a.data_dir / name) for name in DEFAULT_JUDGES]
    feats = [correction_fit.pool_features(p) for p in pools]
    for k, pool in enumerate(pools):
        rest = [j for j in range(len(pools)) if j != k]
        model = correction_fit.fit_correction_model([pools[j] for j in rest], [feats[j] for j in rest], seed=0, evaluate=False)
        describe(pool, model.expected_gain(feats[k]), feats[k], a.budget)


if __name__ == "__main__":
    main()
