"""P(LM label wrong) that keeps its meaning when the judge panel changes (issue 19).

The served correction model (:mod:`hybridpref.predictor.correction`) reads ``no_other_agrees``
("every other judge said otherwise"), whose meaning depends on how many other judges are recorded: with
one other judge it fires on every disagreement, with three it hardly fires. Fitted on pools with 0, 1
and 5 other judges, it fell 14-35 points of share below the router's own ``judge_doubt`` on a pool
with three (issue 19). This module's features mean the same thing whatever the panel size:

* ``no_verdict``, ``order_flip``: the judge's own doubt (the probability is 1 where there is no verdict);
* ``any_other``: some other judge is recorded on the row;
* ``disagree``: the share of the other recorded judges whose verdict differs (0 when none is recorded);
* ``p_unsure`` = ``1 - |2 p_a - 1|`` and ``p_missing``: a live judge's own probability, when it gives one;
* text features from whitespace words (no tagger): ``lm_picked_shorter``, ``abs_log_len_ratio``,
  ``log_prompt_len``, ``word_overlap``, ``log_len_shorter``.

**Monotone in the judge's doubt**: the fitted coefficients of ``disagree``, ``order_flip`` and
``p_unsure`` are constrained to be >= 0 (box-constrained L-BFGS), so P(LM wrong) never falls when one
more judge disagrees or the judge is less sure (:func:`check_monotone` tests it on any model).

**Fallback**: each model also carries a one-feature logistic of the router's ``signal_doubt``
(``doubt`` model) and the descriptors of its training panels (:func:`panel_descriptor`). On a batch
whose panel is far from every training panel (:meth:`PanelCorrectionModel.shrinkage`), the logit is
shrunk toward the doubt model's: ``(1 - lam) * logit_model + lam * logit_doubt``.

Prediction is pure numpy (:meth:`PanelCorrectionModel.from_json`); fitting needs scipy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridpref.common.instances import PreferenceInstance
from hybridpref.common.signals import JudgeSignals

if TYPE_CHECKING:
    from hybridpref.evaluation.pools import Pool

MODEL_VERSION = "panel-correction/1"
PANEL_FEATURES: tuple[str, ...] = (
    "no_verdict", "order_flip", "any_other", "disagree", "all_disagree", "majority_disagree", "p_unsure", "p_missing",
    "lm_picked_shorter", "abs_log_len_ratio", "log_prompt_len", "word_overlap", "log_len_shorter",
)
# Features whose coefficient must be >= 0: more doubt never lowers P(LM wrong).
MONOTONE: tuple[str, ...] = ("order_flip", "disagree", "all_disagree", "majority_disagree", "p_unsure")
_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[a-z0-9]+")


def panel_features(instances: Sequence[PreferenceInstance], signals: JudgeSignals) -> np.ndarray:
    """(n, len(PANEL_FEATURES)) float64 in :data:`PANEL_FEATURES` order from the texts and the judge's
    signals (``agreement`` = share of the other recorded judges that agree, NaN when none)."""
    n = len(instances)
    if len(signals) != n:
        raise ValueError(f"signals has {len(signals)} rows for {n} instances")
    label = np.asarray(signals.label, dtype=np.int64)
    agreement = np.asarray(signals.agreement, dtype=np.float64)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    any_other = np.isfinite(agreement)
    disagree = np.where(any_other, 1.0 - np.nan_to_num(agreement, nan=1.0), 0.0)
    len_a = np.array([len(_WORD.findall(i.response_a)) for i in instances], dtype=np.float64)
    len_b = np.array([len(_WORD.findall(i.response_b)) for i in instances], dtype=np.float64)
    len_p = np.array([len(_WORD.findall(i.prompt_text)) for i in instances], dtype=np.float64)
    longer = np.sign(len_a - len_b)
    cols = {
        "no_verdict": label == 0,
        "order_flip": np.asarray(signals.order_flip, dtype=bool),
        "any_other": any_other,
        "disagree": disagree,
        "all_disagree": any_other & (disagree >= 1.0 - 1e-9),
        "majority_disagree": disagree > 0.5,
        "p_unsure": np.where(np.isnan(p_a), 0.0, 1.0 - np.abs(2.0 * np.nan_to_num(p_a, nan=0.5) - 1.0)),
        "p_missing": np.isnan(p_a),
        "lm_picked_shorter": (label != 0) & (longer != 0) & (label == -longer),
        "abs_log_len_ratio": np.abs(np.log1p(len_a) - np.log1p(len_b)),
        "log_prompt_len": np.log1p(len_p),
        "word_overlap": np.array([_word_overlap(i.response_a, i.response_b) for i in instances]),
        "log_len_shorter": np.log1p(np.minimum(len_a, len_b)),
    }
    return np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in PANEL_FEATURES]) if n else np.zeros((0, len(PANEL_FEATURES)))


def _word_overlap(a: str, b: str) -> float:
    sa, sb = set(_TOKEN.findall(a.lower())), set(_TOKEN.findall(b.lower()))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def signal_doubt_from_features(x: np.ndarray) -> np.ndarray:
    """The router's ``signal_doubt`` (:func:`hybridpref.router.strategies.signal_doubt`) from panel
    features: 1 with no verdict or an order flip, else 0.9 * max(disagree, p_unsure)."""
    col = {c: j for j, c in enumerate(PANEL_FEATURES)}
    d = 0.9 * np.clip(np.maximum(x[:, col["disagree"]], x[:, col["p_unsure"]]), 0.0, 1.0)
    return np.where((x[:, col["no_verdict"]] > 0.5) | (x[:, col["order_flip"]] > 0.5), 1.0, d)


def panel_descriptor(x: np.ndarray) -> np.ndarray:
    """What a batch's panel looks like, (3,): share of rows with another judge recorded, mean
    disagreement share where one is, share of rows without a verdict. Panel-size free."""
    if not len(x):
        return np.zeros(3)
    col = {c: j for j, c in enumerate(PANEL_FEATURES)}
    anyo = x[:, col["any_other"]] > 0.5
    return np.array([anyo.mean(), x[anyo, col["disagree"]].mean() if anyo.any() else 0.0, x[:, col["no_verdict"]].mean()])


# ---------------------------------------------------------------- logistic pieces (pure numpy)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@dataclass
class Linear:
    """``logit = ((x - mean) / scale) @ coef + intercept`` over ``columns`` of the panel features."""

    columns: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        idx = [PANEL_FEATURES.index(c) for c in self.columns]
        if not idx:
            return np.full(len(x), self.intercept)
        return ((np.asarray(x, dtype=np.float64)[:, idx] - self.mean) / self.scale) @ self.coef + self.intercept

    def raw_coef(self) -> dict[str, float]:
        """Coefficient per unit of each feature (the sign the monotone check reads)."""
        return {c: float(w / s) for c, w, s in zip(self.columns, self.coef, self.scale)}

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Linear:
        return cls(tuple(d["columns"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float),
                   np.asarray(d["coef"], float), float(d["intercept"]))

    @classmethod
    def constant(cls, rate: float) -> Linear:
        rate = float(np.clip(rate, 1e-4, 1 - 1e-4))
        return cls((), np.zeros(0), np.ones(0), np.zeros(0), math.log(rate / (1 - rate)))


def fit_linear(x: np.ndarray, y: np.ndarray, columns: Sequence[str], *, l2: float = 10.0, weights: np.ndarray | None = None,
               nonneg: Sequence[str] = MONOTONE) -> Linear:
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


# ---------------------------------------------------------------- the model


@dataclass
class PanelCorrectionModel:
    """P(LM wrong) and P(human vote wrong) from :func:`panel_features` rows -> (n,) each.

    ``lm``: calibrated logit of P(LM wrong) on verdict rows (1 where there is no verdict); ``doubt``:
    one-feature logit on ``signal_doubt`` (the fallback); ``human``: P(one human vote wrong);
    ``panels``: descriptors of the training panels (rows of :func:`panel_descriptor`) and ``spread``
    their per-component scale; ``fallback_distance``: the distance at which the fallback is complete
    (0 disables it)."""

    lm: Linear
    doubt: tuple[float, float]  # (a, c): logit = a * signal_doubt + c, a >= 0
    human: Linear
    panels: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    spread: np.ndarray = field(default_factory=lambda: np.ones(3))
    fallback_distance: float = 0.0
    human_rate: float = 0.0  # P(human vote wrong) over the training rows (the fallback's value)
    metrics: dict[str, Any] = field(default_factory=dict)

    def shrinkage(self, x: np.ndarray) -> float:
        """Weight of the doubt model for a batch: 0 inside the training panels' range, rising linearly
        with the descriptor's distance to the nearest training panel, 1 at ``fallback_distance``."""
        if self.fallback_distance <= 0 or not len(self.panels) or not len(x):
            return 0.0
        d = np.abs((panel_descriptor(x)[None, :] - self.panels) / self.spread).max(axis=1).min()
        return float(np.clip(d / self.fallback_distance, 0.0, 1.0))

    def p_lm_wrong(self, x: np.ndarray, lam: float | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        lam = self.shrinkage(x) if lam is None else lam
        z = self.lm.logit(x)
        if lam > 0:
            z = (1 - lam) * z + lam * (self.doubt[0] * signal_doubt_from_features(x) + self.doubt[1])
        no_verdict = x[:, PANEL_FEATURES.index("no_verdict")] > 0.5
        return np.where(no_verdict, 1.0, _sigmoid(z))

    def p_human_wrong(self, x: np.ndarray, lam: float | None = None) -> np.ndarray:
        """P(one human vote wrong); under the fallback (``lam`` > 0) shrunk toward its training rate, so
        that at ``lam = 1`` the routing order is exactly the judge's own doubt."""
        x = np.asarray(x, dtype=np.float64)
        lam = self.shrinkage(x) if lam is None else lam
        p = _sigmoid(self.human.logit(x))
        return p if lam <= 0 else (1 - lam) * p + lam * self.human_rate

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, 2) float64: [P(LM wrong), P(human vote wrong)]."""
        x = np.asarray(x, dtype=np.float64)
        lam = self.shrinkage(x)
        return np.stack([self.p_lm_wrong(x, lam), self.p_human_wrong(x, lam)], axis=1)

    def expected_gain(self, x: np.ndarray) -> np.ndarray:
        p = self.probabilities(x)
        return p[:, 0] - p[:, 1]

    def to_json(self) -> dict[str, Any]:
        return {"version": MODEL_VERSION, "feature_names": list(PANEL_FEATURES), "lm": self.lm.to_json(),
                "doubt": list(self.doubt), "human": self.human.to_json(), "panels": self.panels.tolist(),
                "spread": self.spread.tolist(), "fallback_distance": self.fallback_distance, "human_rate": self.human_rate, "metrics": self.metrics}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PanelCorrectionModel:
        if tuple(d.get("feature_names", ())) != PANEL_FEATURES:
            raise ValueError(f"model reads features {d.get('feature_names')}, this code computes {list(PANEL_FEATURES)}")
        return cls(Linear.from_json(d["lm"]), (float(d["doubt"][0]), float(d["doubt"][1])), Linear.from_json(d["human"]),
                   np.asarray(d["panels"], float).reshape(-1, 3), np.asarray(d["spread"], float),
                   float(d["fallback_distance"]), float(d.get("human_rate", 0.0)), dict(d.get("metrics", {})))


def check_monotone(model: PanelCorrectionModel, x: np.ndarray, *, steps: int = 5) -> bool:
    """True when P(LM wrong) never falls as the disagreement share rises (0 -> 1 in ``steps``) on every
    row of ``x`` that has another judge, with the shrinkage of ``x`` held fixed."""
    x = np.asarray(x, dtype=np.float64).copy()
    j = PANEL_FEATURES.index("disagree")
    lam = model.shrinkage(x)
    rows = x[x[:, PANEL_FEATURES.index("any_other")] > 0.5]
    if not len(rows):
        return True
    prev = None
    for share in np.linspace(0, 1, steps):
        r = rows.copy()
        r[:, j] = share
        r[:, PANEL_FEATURES.index("all_disagree")] = float(share >= 1.0)
        r[:, PANEL_FEATURES.index("majority_disagree")] = float(share > 0.5)
        p = model.p_lm_wrong(r, lam)
        if prev is not None and np.any(p < prev - 1e-12):
            return False
        prev = p
    return True


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
        return cls(name or pool.name, x[keep], pool.signals().label[keep] != ref, pool.human[keep] != ref,
                   pool.reference_kind[keep] == "other_votes", weight)


def fit_panel_model(sets: Sequence[TrainingSet], columns: Sequence[str], *, l2: float = 10.0, calibrate: bool = True,
                    groups: Sequence[str] | None = None, fallback_distance: float = 0.0, verdict_only: bool = False,
                    nonneg: Sequence[str] = MONOTONE) -> PanelCorrectionModel:
    """Fit on ``sets``; ``groups[i]`` names the pool of set i (panel variants of one pool share it), and
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
    human = fit_linear(hx, hy, columns, l2=l2, weights=hw, nonneg=()) if len(hy) >= 50 else Linear.constant(float(hy.mean()) if len(hy) else 0.0)
    panels = np.array([panel_descriptor(s.x) for s in sets]) if sets else np.zeros((0, 3))
    spread = np.maximum(panels.std(axis=0), 0.05) if len(panels) > 1 else np.full(3, 0.05)
    rate = float(np.average(hy, weights=hw)) if len(hy) else 0.0
    return PanelCorrectionModel(lm, doubt, human, panels, spread, fallback_distance, rate,
                                {"columns": list(columns), "l2": l2, "calibrated": bool(calibrate and len(uniq) > 1),
                                 "training": {s.name: {"rows": int(len(s.x)), "weight": s.weight} for s in sets}})


# The recommended feature set (benchmarks/panel_study.py, docs/EVALUATION.md "Panel shift"): the judge's
# own signals, the disagreement share, and the two text features of the served model; length-direction
# features (LM picked the shorter, |log length ratio|) and prompt length did not transfer at 50%.
RECOMMENDED_COLUMNS: tuple[str, ...] = ("order_flip", "any_other", "disagree", "p_unsure", "p_missing",
                                        "word_overlap", "log_len_shorter")


def fit_for_pools(pools: Sequence[Pool], *, columns: Sequence[str] = RECOMMENDED_COLUMNS, l2: float = 10.0,
                  fallback_distance: float = 0.0) -> PanelCorrectionModel:
    """The recommended model: fitted on every panel variant of ``pools``
    (:func:`hybridpref.evaluation.panels.panel_variants`), each pool weighted as one pool whatever its
    number of variants, Platt-calibrated on leave-one-pool-out logits."""
    from hybridpref.evaluation.panels import panel_variants

    sets, groups = [], []
    for pool in pools:
        vs = panel_variants(pool)
        for v in vs:
            sets.append(TrainingSet.from_pool(v.pool, v.name, 1.0 / len(vs)))
            groups.append(pool.name)
    return fit_panel_model(sets, columns, l2=l2, groups=groups, fallback_distance=fallback_distance)
