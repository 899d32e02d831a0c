"""Fitting the expected-correction model (offline): training data from labelled pools, the calibrated LM-wrong
and human-wrong logistic models, leave-one-pool-out metrics and the correction-transfer check.

The served form and the features live in :mod:`hybridpref.routing_model.correction` (see its docstring for
targets, features and calibration); this module produces a :class:`CorrectionModel` from pools.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref.offline.pools import Pool
from hybridpref.routing_model.correction import (
    DEFAULT_COLUMNS,
    FEATURE_NAMES,
    HUMAN_COLUMNS,
    CorrectionModel,
    _Logistic,
    correction_features,
    lm_probability,
    uses_tagger,
)

MIN_HUMAN_ROWS = 50
TRANSFER_BUDGETS = (0.1, 0.25, 0.5)


def fit_logistic(x: np.ndarray, y: np.ndarray, columns: Sequence[int], c: float, seed: int) -> _Logistic:
    """Standardised L2 logistic regression on ``columns`` of ``x`` (other columns get weight 0)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    width = x.shape[1]
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2 or not len(columns):
        return _Logistic.constant(width, float(y.mean()) if len(y) else 0.0)
    mean, scale = np.zeros(width), np.ones(width)
    cols = np.asarray(columns, dtype=int)
    mean[cols] = x[:, cols].mean(0)
    sd = x[:, cols].std(0)
    scale[cols] = np.where(sd > 1e-9, sd, 1.0)  # a constant column (never seen varying) gets weight ~0
    z = (x[:, cols] - mean[cols]) / scale[cols]
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
    coef = np.zeros(width)
    coef[cols] = lr.coef_[0]
    return _Logistic(mean, scale, coef, float(lr.intercept_[0]))


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, c) of ``sigmoid(a * logit + c)`` fitted to ``y`` (near-unregularised 1-D logistic)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=2000).fit(np.asarray(logits, dtype=np.float64)[:, None], np.asarray(y, dtype=int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (NaN when ``y`` has one class)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """(ECE, curve) with ``bins`` equal-width bins of the predicted probability; the curve lists
    per non-empty bin its range, count, mean prediction and observed rate."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        mp, my = float(p[m].mean()), float(y[m].mean())
        ece += m.mean() * abs(mp - my)
        curve.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(m.sum()), "predicted": mp, "observed": my})
    return float(ece), curve


@dataclass
class _PoolData:
    name: str
    x: np.ndarray  # (n, F) rows with a non-zero reference
    lm_wrong: np.ndarray  # (n,) bool
    human_wrong: np.ndarray  # (n,) bool
    votes: np.ndarray  # (n,) bool: reference from other human votes (target B defined)
    x_all: np.ndarray  # (N, F) every row, tie references included (a routed batch holds them too)
    net_all: np.ndarray  # (N,) realised corrections if routed: +1 fixed, -1 broken, 0 (also on a tie reference)

    def describe(self) -> dict[str, float]:
        return {
            "rows": int(len(self.x)),
            "lm_wrong_rate": float(self.lm_wrong.mean()) if len(self.x) else 0.0,
            "other_votes_rows": int(self.votes.sum()),
            "human_wrong_rate_other_votes": float(self.human_wrong[self.votes].mean()) if self.votes.any() else 0.0,
        }


def _training_data(
    pools: Sequence[Pool], features: Sequence[np.ndarray], signals: Sequence[JudgeSignals] | None
) -> list[_PoolData]:
    if len(pools) != len(features) or (signals is not None and len(signals) != len(pools)):
        raise ValueError("pools, features (and signals) must be aligned lists")
    out = []
    for i, pool in enumerate(pools):
        sig = signals[i] if signals is not None else pool.signals()
        x = np.asarray(features[i], dtype=np.float64)
        if x.shape != (len(pool), len(FEATURE_NAMES)):
            raise ValueError(
                f"features for pool {pool.name!r} have shape {x.shape}, expected ({len(pool)}, {len(FEATURE_NAMES)})"
            )
        keep = pool.reference != 0
        ref = pool.reference[keep]
        net = realised_corrections(pool.human, np.asarray(sig.label), pool.reference)
        out.append(
            _PoolData(
                pool.name,
                x[keep],
                np.asarray(sig.label)[keep] != ref,
                pool.human[keep] != ref,
                pool.reference_kind[keep] == "other_votes",
                x,
                net,
            )
        )
    return out


def realised_corrections(human: np.ndarray, lm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n,) what buying the human label did to each row: +1 (LM wrong, human right), -1 (LM right, human
    wrong), 0 otherwise, and 0 where the reference is a tie (neither label is a correction there)."""
    ref = np.asarray(reference)
    right_h = (np.asarray(human) == ref) & (ref != 0)
    right_lm = (np.asarray(lm) == ref) & (ref != 0)
    return right_h.astype(np.int64) - right_lm.astype(np.int64)


def _all_xy(data: Sequence[_PoolData]) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([d.x for d in data]), np.concatenate([d.lm_wrong for d in data])


def _fit_calibrated(data: Sequence[_PoolData], cols: Sequence[int], c: float, seed: int) -> _Logistic:
    """LM-wrong model on all rows of ``data``, Platt-calibrated on leave-one-pool-out logits (>= 2 pools).

    All rows, not only the verdict rows: measured, the verdict-only fit transferred worse (on PandaLM
    the share of the oracle's gain at 25% fell from 0.47 to 0.22), because the no-verdict rows teach
    the agreement signal that the verdict rows of the other pools hardly carry."""
    model = fit_logistic(*_all_xy(data), cols, c, seed)
    if len(data) < 2:
        return model
    oof, ys = [], []
    for k, held in enumerate(data):
        rest = [d for j, d in enumerate(data) if j != k]
        m = fit_logistic(*_all_xy(rest), cols, c, seed)
        hx, hy = _all_xy([held])
        oof.append(m.logit(hx))
        ys.append(hy)
    return model.calibrated(*platt(np.concatenate(oof), np.concatenate(ys)))


def _fit_human(data: Sequence[_PoolData], cols: Sequence[int], c: float, seed: int) -> _Logistic:
    """Human-vote-wrong model on ``other_votes`` rows; a global rate when there are too few."""
    x = np.vstack([d.x[d.votes] for d in data])
    y = np.concatenate([d.human_wrong[d.votes] for d in data])
    width = len(FEATURE_NAMES)
    if len(y) < MIN_HUMAN_ROWS:
        return _Logistic.constant(width, float(y.mean()) if len(y) else 0.0)
    return fit_logistic(x, y, cols, c, seed)


def _lopo_metrics(data: Sequence[_PoolData], cols: Sequence[int], hcols: Sequence[int], c: float, seed: int) -> dict[str, Any]:
    """Per held-out pool, with models fitted and calibrated without it: AUROC / ECE / reliability of P(LM
    wrong), the human-vote model's AUROC, and the transfer of summed expected corrections (:func:`_transfer`)."""
    per_pool, transfer, all_y, all_p = {}, {}, [], []
    for k, held in enumerate(data):
        rest = [d for j, d in enumerate(data) if j != k]
        model, human = _fit_calibrated(rest, cols, c, seed), _fit_human(rest, hcols, c, seed)
        p = lm_probability(model, held.x)
        ece, curve = reliability(held.lm_wrong, p)
        entry: dict[str, Any] = {
            "rows": int(len(p)),
            "auroc": auroc(held.lm_wrong, p),
            "ece": ece,
            "mean_predicted": float(p.mean()),
            "observed_rate": float(held.lm_wrong.mean()),
            "reliability": curve,
        }
        if held.votes.sum() >= 20 and any(d.votes.any() for d in rest):
            h = human.predict(held.x[held.votes])
            entry["human_auroc"] = auroc(held.human_wrong[held.votes], h)
            entry["human_mean_predicted"] = float(h.mean())
            entry["human_observed_rate"] = float(held.human_wrong[held.votes].mean())
        per_pool[held.name] = entry
        if len(held.x_all):
            transfer[held.name] = _transfer(held, model, human)
        all_y.append(held.lm_wrong)
        all_p.append(p)
    y, p = np.concatenate(all_y), np.concatenate(all_p)
    ece, curve = reliability(y, p)
    ratios = [e["ratio"] for rows in transfer.values() for e in rows.values() if "ratio" in e]
    return {
        "pools": per_pool,
        "pooled": {"auroc": auroc(y, p), "ece": ece, "reliability": curve},
        "min_auroc": float(min(e["auroc"] for e in per_pool.values())),
        "max_ece": float(max(e["ece"] for e in per_pool.values())),
        "transfer": {
            "budgets": list(TRANSFER_BUDGETS),
            "pools": transfer,
            **({"ratio_range": [float(min(ratios)), float(max(ratios))]} if ratios else {}),
        },
    }


def _transfer(held: _PoolData, lm: _Logistic, human: _Logistic) -> dict[str, dict[str, float]]:
    """How the summed expected corrections of a routed batch compare with the realised ones on a pool the
    model did not see: the pool routed as one batch (top ``budget`` share by expected gain), realised /
    predicted per budget in :data:`TRANSFER_BUDGETS`. Human error and tie rates are properties of the
    annotators, not of the pairs (measured: 0.35x to 1.9x across the shared pools), so the router widens
    its correction intervals by the range of these ratios (:func:`transfer_range`)."""
    gain = lm_probability(lm, held.x_all) - human.predict(held.x_all)
    order = np.argsort(-gain, kind="stable")
    rows: dict[str, dict[str, float]] = {}
    for b in TRANSFER_BUDGETS:
        top = order[: max(1, int(round(b * len(order))))]
        predicted, realised = float(gain[top].sum()), float(held.net_all[top].sum())
        entry = {"routed": int(len(top)), "predicted": predicted, "realised": realised}
        if predicted > 1.0:  # a ratio of tiny sums says nothing
            entry["ratio"] = realised / predicted
        rows[f"{b:g}"] = entry
    return rows


def fit_correction_model(
    pools: Sequence[Pool],
    features: Sequence[np.ndarray],
    seed: int,
    *,
    signals: Sequence[JudgeSignals] | None = None,
    columns: Sequence[str] | None = None,
    human_columns: Sequence[str] | None = None,
    c: float = 0.1,
    evaluate: bool = True,
) -> CorrectionModel:
    """Fit on ``pools`` (features[i] aligned with pools[i]; ``signals[i]`` defaults to the pool's
    default judge, and must be the signals the features were computed from).

    ``columns`` / ``human_columns``: feature names the LM / human model may use (default
    :data:`DEFAULT_COLUMNS` / :data:`HUMAN_COLUMNS`). With two or more
    pools, the LM model is Platt-calibrated on leave-one-pool-out predictions and, when ``evaluate``,
    leave-one-pool-out metrics (AUROC, ECE, reliability curve) go to ``metrics`` (nested: each
    held-out pool is predicted by a model fitted and calibrated without it).
    """
    data = _training_data(pools, features, signals)
    cols = [FEATURE_NAMES.index(n) for n in (DEFAULT_COLUMNS if columns is None else columns)]
    hcols = [FEATURE_NAMES.index(n) for n in (HUMAN_COLUMNS if human_columns is None else human_columns)]
    lm = _fit_calibrated(data, cols, c, seed)
    human = _fit_human(data, hcols, c, seed)
    metrics: dict[str, Any] = {
        "model": "logistic",
        "l2_c": c,
        "columns": [FEATURE_NAMES[j] for j in cols],
        "human_columns": [FEATURE_NAMES[j] for j in hcols],
        "calibration": "platt on leave-one-pool-out logits" if len(data) > 1 else "none (one pool)",
        "training": {d.name: d.describe() for d in data},
    }
    if evaluate and len(data) > 1:
        metrics["leave_one_pool_out"] = _lopo_metrics(data, cols, hcols, c, seed)
    return CorrectionModel(lm, human, FEATURE_NAMES, metrics)


# ---------------------------------------------------------------- convenience for the harness


def pool_tags(pool: Pool, profile: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """(measures (n, 9), tags (n, 90)) of a pool's instances from the tagger core, cached on disk by
    (profile, texts) under ``runtime.cache_dir()/correction``."""
    from hybridpref.common.vocabulary import VOCABULARY_VERSION
    from hybridpref.server.runtime import cache_dir

    h = hashlib.sha256(f"{profile}|{VOCABULARY_VERSION}".encode())
    for inst in pool.instances:
        h.update("\x00".join((inst.id, inst.prompt_text, inst.response_a, inst.response_b)).encode())
    path = cache_dir() / "correction" / f"{h.hexdigest()[:32]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["measures"], z["tags"]
    from hybridpref.tagger.core import Tagger

    tagger = Tagger.for_profile(profile)
    tagger.load()
    batch = tagger.tag(list(pool.instances))
    measures, tags = np.asarray(batch.measures, dtype=np.float64), np.asarray(batch.tag_matrix, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), measures=measures, tags=tags)
    path.with_suffix(".tmp.npz").replace(path)
    return measures, tags


def pool_features(pool: Pool, judge: str | None = None, tagger_profile: str | None = None) -> np.ndarray:
    """Features of a pool with the recorded signals of ``judge`` (default: the pool's); with a
    ``tagger_profile`` the tagger's measures and tags are included (cached), else text-only."""
    measures, tags = pool_tags(pool, tagger_profile) if tagger_profile else (None, None)
    return correction_features(pool.instances, measures, tags, pool.signals(judge))


def fit_for_pools(train: Sequence[Pool], seed: int, tagger_profile: str | None = "fast") -> CorrectionModel:
    """A model fitted on ``train`` pools (their default judges), with leave-one-pool-out metrics.

    The default feature set is text-only (the tagger's measures and tags did not improve cross-pool
    routing; ``benchmarks/correction_study.py``), so ``tagger_profile`` is used only when
    :data:`DEFAULT_COLUMNS` reads measure or tag columns."""
    profile = tagger_profile if uses_tagger(DEFAULT_COLUMNS + HUMAN_COLUMNS) else None
    feats = [pool_features(p, tagger_profile=profile) for p in train]
    return fit_correction_model(train, feats, seed)


def pool_probabilities(
    model: CorrectionModel, pool: Pool, judge: str | None = None, tagger_profile: str | None = None
) -> np.ndarray:
    """(n, 2) [P(LM wrong), P(human wrong)] for every instance of ``pool`` (judge's signals). The tagger
    runs only when the model gives weight to measure or tag columns."""
    used = [n for j, n in enumerate(model.feature_names) if model.lm.coef[j] != 0 or model.human.coef[j] != 0]
    profile = (tagger_profile or "fast") if uses_tagger(used) else None
    return model.probabilities(pool_features(pool, judge, profile))


def expected_gain_for_pool(
    model: CorrectionModel, pool: Pool, judge: str | None = None, tagger_profile: str | None = None
) -> np.ndarray:
    """(n,) expected corrections per human label for every instance of ``pool`` (judge's signals)."""
    p = pool_probabilities(model, pool, judge, tagger_profile)
    return p[:, 0] - p[:, 1]
