"""Leave-one-pool-out study of the expected-correction model: feature sets x (logistic, gradient boosting).

    python benchmarks/correction_study.py --data-dir /work/shared/data [--tagger-profile fast]

Prints, per held-out pool, AUROC of "LM label wrong" and ECE (10 bins) of a model fitted and
Platt-calibrated on the other pools; "pooled" concatenates the held-out predictions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybridpref.offline.bundle import correction_fit
from hybridpref.offline.pools import DEFAULT_JUDGES, default_data_dir, load_pool
from hybridpref.routing_model import correction as corr

SIGNALS = ("lm_no_verdict", "order_flip", "no_other_agrees", "p_confidence", "p_missing")
SETS = {
    "signals": SIGNALS,
    "signals+agreement": SIGNALS + ("agreement", "agreement_missing"),
    "default": corr.DEFAULT_COLUMNS,
    "text_all": corr.SIGNAL_FEATURES + corr.TEXT_FEATURES,
    "default+measures": corr.DEFAULT_COLUMNS + corr.MEASURE_FEATURES,
    "default+tags": corr.DEFAULT_COLUMNS + corr.TAG_FEATURES,
    "all": corr.FEATURE_NAMES,
}


def _hgb_lopo(xs: list[np.ndarray], ys: list[np.ndarray], cols: list[int], seed: int) -> list[np.ndarray]:
    """Held-out probabilities of HistGradientBoosting, Platt-calibrated on inner leave-one-pool-out logits."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fit(idx: list[int]) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.05, max_depth=3, l2_regularization=1.0, random_state=seed
        ).fit(np.vstack([xs[i][:, cols] for i in idx]), np.concatenate([ys[i] for i in idx]))

    def logit(m, x):  # noqa: ANN001
        p = np.clip(m.predict_proba(x[:, cols])[:, 1], 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    out = []
    for k in range(len(xs)):
        rest = [i for i in range(len(xs)) if i != k]
        inner = [logit(fit([j for j in rest if j != i]), xs[i]) for i in rest]
        a, c = correction_fit.platt(np.concatenate(inner), np.concatenate([ys[i] for i in rest]))
        out.append(1 / (1 + np.exp(-(a * logit(fit(rest), xs[k]) + c))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--tagger-profile", default="fast", help="tagger profile for measures/tags ('' = none)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pools = [load_pool(a.data_dir / name) for name in DEFAULT_JUDGES]
    feats = [correction_fit.pool_features(p, tagger_profile=a.tagger_profile or None) for p in pools]
    keep = [p.reference != 0 for p in pools]
    xs = [f[k].astype(np.float64) for f, k in zip(feats, keep)]
    ys = [(p.signals().label != p.reference)[k] for p, k in zip(pools, keep)]
    for name, cols in SETS.items():
        lr = correction_fit.fit_correction_model(pools, feats, a.seed, columns=cols).metrics["leave_one_pool_out"]
        row = " ".join(f"{p[:8]} {v['auroc']:.3f}/{v['ece']:.3f}" for p, v in lr["pools"].items())
        print(f"logistic {name:18s} {row}  pooled {lr['pooled']['auroc']:.3f}/{lr['pooled']['ece']:.3f}")
        ps = _hgb_lopo(xs, ys, [corr.FEATURE_NAMES.index(c) for c in cols], a.seed)
        row = " ".join(
            f"{p.name[:8]} {correction_fit.auroc(y, q):.3f}/{correction_fit.reliability(y, q)[0]:.3f}"
            for p, y, q in zip(pools, ys, ps)
        )
        y, q = np.concatenate(ys), np.concatenate(ps)
        print(f"hgb      {name:18s} {row}  pooled {correction_fit.auroc(y, q):.3f}/{correction_fit.reliability(y, q)[0]:.3f}")


if __name__ == "__main__":
    main()
