"""Fitting the panel-invariant correction model (:mod:`hybridpref.routing_model.panel_correction`).

Box-constrained L2 logistic regression (scipy L-BFGS-B: monotone columns >= 0), Platt calibration on
leave-one-pool-out logits (slope >= 0), and the recommended recipe :func:`fit_for_pools`: every panel
variant of the training pools (:func:`hybridpref.offline.panels.panel_variants`), each pool weighted as
one pool. Measured in ``benchmarks/panel_study.py`` (docs/EVALUATION.md, "Panel shift").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridpref.offline.pools import Pool
from hybridpref.routing_model.panel_correction import (
    MONOTONE,
    PANEL_FEATURES,
    RECOMMENDED_COLUMNS,
    Linear,
    PanelCorrectionModel,
    _sigmoid,
    panel_descriptor,
    panel_features,
    signal_doubt_from_features,
)


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    columns: Sequence[str],
    *,
    l2: float = 10.0,
    weights: np.ndarray | None = None,
    nonneg: Sequence[str] = MONOTONE,
) -> Linear:
    """Logistic regression on standardised ``columns`` with an L2 penalty ``l2 * |coef|^2 / 2`` (on the
    weighted mean loss times the weight total, i.e. sklearn's ``C = 1 / l2``) and coefficients of
    ``nonneg`` columns constrained >= 0 (L-BFGS-B). ``weights`` (n,) per-row weights (default 1)."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(y) == 0 or w.sum() <= 0:
        return Linear.constant(0.5)
    rate = float(np.average(y, weights=w))
    if not columns or rate <= 0 or rate >= 1:
        return Linear.constant(rate)
    idx = [PANEL_FEATURES.index(c) for c in columns]
    xs = x[:, idx]
    mean = np.average(xs, axis=0, weights=w)
    sd = np.sqrt(np.average((xs - mean) ** 2, axis=0, weights=w))
    scale = np.where(sd > 1e-9, sd, 1.0)
    z = (xs - mean) / scale
    m = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = z @ theta[:m] + theta[m]
        p = _sigmoid(eta)
        # log(1 + e^eta) - y * eta, stable
        nll = np.sum(w * (np.logaddexp(0.0, eta) - y * eta))
        g = w * (p - y)
        grad = np.concatenate([z.T @ g + l2 * theta[:m], [g.sum()]])
        return float(nll + 0.5 * l2 * theta[:m] @ theta[:m]), grad

    bounds = [(0.0, None) if c in nonneg else (None, None) for c in columns] + [(None, None)]
    theta0 = np.zeros(m + 1)
    theta0[m] = math.log(rate / (1 - rate))
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    return Linear(tuple(columns), mean, scale, res.x[:m].copy(), float(res.x[m]))


def platt(logits: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(a, c) of ``sigmoid(a * logit + c)`` fitted to ``y``, ``a`` >= 0 (calibration never reverses a ranking)."""
    from scipy.optimize import minimize

    s = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)

    def loss(t: np.ndarray) -> tuple[float, np.ndarray]:
        eta = t[0] * s + t[1]
        g = w * (_sigmoid(eta) - y)
        return float(np.sum(w * (np.logaddexp(0.0, eta) - y * eta))), np.array([g @ s, g.sum()])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
    return float(res.x[0]), float(res.x[1])


# ---------------------------------------------------------------- fitting


@dataclass
class TrainingSet:
    """Rows of one training pool (or one panel variant of it): features, targets, and a weight per row
    so that a pool counts the same however many panel variants it contributes."""

    name: str
    x: np.ndarray
    lm_wrong: np.ndarray  # (n,) bool, rows with a non-tie reference
    human_wrong: np.ndarray
    votes: np.ndarray  # (n,) bool: reference from other human votes (target of the human model)
    weight: float = 1.0

    @classmethod
    def from_pool(cls, pool: Pool, name: str | None = None, weight: float = 1.0) -> TrainingSet:
        x = panel_features(pool.instances, pool.signals())
        keep = pool.reference != 0
        ref = pool.reference[keep]
        return cls(
            name or pool.name,
            x[keep],
            pool.signals().label[keep] != ref,
            pool.human[keep] != ref,
            pool.reference_kind[keep] == "other_votes",
            weight,
        )


def fit_panel_model(
    sets: Sequence[TrainingSet],
    columns: Sequence[str],
    *,
    l2: float = 10.0,
    calibrate: bool = True,
    groups: Sequence[str] | None = None,
    fallback_distance: float = 0.0,
    verdict_only: bool = False,
    nonneg: Sequence[str] = MONOTONE,
    human_columns: Sequence[str] | None = None,
) -> PanelCorrectionModel:
    """Fit on ``sets``; ``human_columns``: the P(human wrong) model's columns (default ``columns``; () = a rate); ``groups[i]`` names the pool of set i (panel variants of one pool share it), and
    the Platt calibration uses leave-one-group-out logits (>= 2 groups). ``verdict_only``: the LM model
    learns from rows with a verdict only (no-verdict rows are 1 by rule anyway)."""
    groups = list(groups) if groups is not None else [s.name for s in sets]

    def stack(which: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys, ws = [], [], []
        for i in which:
            s = sets[i]
            keep = s.x[:, PANEL_FEATURES.index("no_verdict")] < 0.5 if verdict_only else np.ones(len(s.x), bool)
            xs.append(s.x[keep])
            ys.append(s.lm_wrong[keep])
            ws.append(np.full(int(keep.sum()), s.weight))
        return np.vstack(xs), np.concatenate(ys), np.concatenate(ws)

    every = list(range(len(sets)))
    x, y, w = stack(every)
    lm = fit_linear(x, y, columns, l2=l2, weights=w, nonneg=nonneg)
    doubt = platt(signal_doubt_from_features(x), y, w)
    uniq = sorted(set(groups))
    if calibrate and len(uniq) > 1:
        oof, ys, ws = [], [], []
        for g in uniq:
            train = [i for i in every if groups[i] != g]
            held = [i for i in every if groups[i] == g]
            m = fit_linear(*stack(train)[:2], columns, l2=l2, weights=stack(train)[2], nonneg=nonneg)
            hx, hy, hw = stack(held)
            oof.append(m.logit(hx))
            ys.append(hy)
            ws.append(hw)
        a, c = platt(np.concatenate(oof), np.concatenate(ys), np.concatenate(ws))
        lm = Linear(lm.columns, lm.mean, lm.scale, lm.coef * a, lm.intercept * a + c)
    hx = np.vstack([s.x[s.votes] for s in sets])
    hy = np.concatenate([s.human_wrong[s.votes] for s in sets])
    hw = np.concatenate([np.full(int(s.votes.sum()), s.weight) for s in sets])
    hcols = columns if human_columns is None else human_columns
    human = (
        fit_linear(hx, hy, hcols, l2=l2, weights=hw, nonneg=())
        if len(hy) >= 50
        else Linear.constant(float(hy.mean()) if len(hy) else 0.0)
    )
    panels = np.array([panel_descriptor(s.x) for s in sets]) if sets else np.zeros((0, 3))
    spread = np.maximum(panels.std(axis=0), 0.05) if len(panels) > 1 else np.full(3, 0.05)
    rate = float(np.average(hy, weights=hw)) if len(hy) else 0.0
    return PanelCorrectionModel(
        lm,
        doubt,
        human,
        panels,
        spread,
        fallback_distance,
        rate,
        {
            "columns": list(columns),
            "l2": l2,
            "calibrated": bool(calibrate and len(uniq) > 1),
            "training": {s.name: {"rows": int(len(s.x)), "weight": s.weight} for s in sets},
        },
    )


def fit_for_pools(
    pools: Sequence[Pool],
    *,
    columns: Sequence[str] = RECOMMENDED_COLUMNS,
    l2: float = 10.0,
    fallback_distance: float = 0.0,
    transfer: bool = False,
) -> PanelCorrectionModel:
    """The recommended model: fitted on every panel variant of ``pools``
    (:func:`hybridpref.offline.panels.panel_variants`), each pool weighted as one pool whatever its
    number of variants, Platt-calibrated on leave-one-pool-out logits. ``transfer`` (>= 2 pools): also
    measure, per pool left out, how the summed expected corrections of a batch routed by a model fitted
    without it compare with the realised ones (:func:`transfer_check`), recorded in
    ``metrics["leave_one_pool_out"]["transfer"]`` as the ONNX model records it: the router widens its
    expected-corrections intervals by that range (``correction.transfer_range``)."""
    from hybridpref.offline.panels import panel_variants

    sets, groups = [], []
    for pool in pools:
        vs = panel_variants(pool)
        for v in vs:
            sets.append(TrainingSet.from_pool(v.pool, v.name, 1.0 / len(vs)))
            groups.append(pool.name)
    model = fit_panel_model(sets, columns, l2=l2, groups=groups, fallback_distance=fallback_distance)
    if transfer and len(pools) > 1:
        per_pool = {
            held.name: transfer_check(
                fit_for_pools([p for p in pools if p is not held], columns=columns, l2=l2, fallback_distance=fallback_distance),
                held,
            )
            for held in pools
        }
        from hybridpref.offline.bundle.correction_fit import TRANSFER_BUDGETS

        ratios = [e["ratio"] for rows in per_pool.values() for e in rows.values() if "ratio" in e]
        model.metrics["leave_one_pool_out"] = {
            "transfer": {
                "budgets": list(TRANSFER_BUDGETS),
                "pools": per_pool,
                **({"ratio_range": [float(min(ratios)), float(max(ratios))]} if ratios else {}),
            }
        }
    return model


def transfer_check(model: PanelCorrectionModel, held: Pool) -> dict[str, dict[str, float]]:
    """The pool ``held`` (as loaded: its usual panel) routed as one batch by ``model`` (top share by expected
    gain, every row, tie references included): predicted vs realised net corrections per budget of
    ``correction_fit.TRANSFER_BUDGETS`` (ratio where the prediction exceeds 1)."""
    from hybridpref.offline.bundle.correction_fit import TRANSFER_BUDGETS, realised_corrections

    sig = held.signals()
    gain = model.expected_gain(panel_features(held.instances, sig))
    net = realised_corrections(held.human, np.asarray(sig.label), held.reference)
    order = np.argsort(-gain, kind="stable")
    rows: dict[str, dict[str, float]] = {}
    for b in TRANSFER_BUDGETS:
        top = order[: max(1, int(round(b * len(order))))]
        predicted, realised = float(gain[top].sum()), float(net[top].sum())
        entry = {"routed": int(len(top)), "predicted": predicted, "realised": realised}
        if predicted > 1.0:  # a ratio of tiny sums says nothing
            entry["ratio"] = realised / predicted
        rows[f"{b:g}"] = entry
    return rows


def write_panel_correction(folder: Any, model: PanelCorrectionModel) -> None:
    """Write the model into a bundle folder as ``panel_correction.json`` (read back by
    :func:`hybridpref.routing_model.panel_correction.read_panel_correction`)."""
    from pathlib import Path

    from hybridpref.routing_model.bundle import write_json
    from hybridpref.routing_model.panel_correction import BUNDLE_FILE

    write_json(Path(folder) / BUNDLE_FILE, model.to_json())
