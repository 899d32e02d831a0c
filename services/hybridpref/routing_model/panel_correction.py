"""P(LM label wrong) that keeps its meaning when the judge panel changes (issue 19).

The served correction model (:mod:`hybridpref.routing_model.correction`) reads ``no_other_agrees``
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

Prediction is pure numpy (:meth:`PanelCorrectionModel.from_json`, the bundle's ``panel_correction.json``);
fitting is offline (:mod:`hybridpref.offline.bundle.panel_correction_fit`), adapting to a campaign's
labels is :mod:`hybridpref.routing_model.online`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref_client.core.instances import PreferenceInstance

MODEL_VERSION = "panel-correction/1"
PANEL_FEATURES: tuple[str, ...] = (
    "no_verdict",
    "order_flip",
    "any_other",
    "disagree",
    "all_disagree",
    "majority_disagree",
    "p_unsure",
    "p_missing",
    "lm_picked_shorter",
    "abs_log_len_ratio",
    "log_prompt_len",
    "word_overlap",
    "log_len_shorter",
)
# Features whose coefficient must be >= 0: more doubt never lowers P(LM wrong).
MONOTONE: tuple[str, ...] = ("order_flip", "disagree", "all_disagree", "majority_disagree", "p_unsure")


def panel_features(instances: Sequence[PreferenceInstance], signals: JudgeSignals, text: np.ndarray | None = None) -> np.ndarray:
    """(n, len(PANEL_FEATURES)) float64 in :data:`PANEL_FEATURES` order from the texts and the judge's
    signals (``agreement`` = share of the other recorded judges that agree, NaN when none). ``text``: the
    rows' :func:`~hybridpref.routing_model.correction.text_stats`, when already computed."""
    from hybridpref.routing_model.correction import text_stats

    n = len(instances)
    if len(signals) != n:
        raise ValueError(f"signals has {len(signals)} rows for {n} instances")
    label = np.asarray(signals.label, dtype=np.int64)
    agreement = np.asarray(signals.agreement, dtype=np.float64)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    any_other = np.isfinite(agreement)
    disagree = np.where(any_other, 1.0 - np.nan_to_num(agreement, nan=1.0), 0.0)
    stats = text_stats(instances) if text is None else np.asarray(text, dtype=np.float64)
    if stats.shape != (n, 4):
        raise ValueError(f"text stats have shape {stats.shape}, expected ({n}, 4)")
    len_a, len_b, len_p = stats[:, 0], stats[:, 1], stats[:, 2]
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
        "word_overlap": stats[:, 3],
        "log_len_shorter": np.log1p(np.minimum(len_a, len_b)),
    }
    return (
        np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in PANEL_FEATURES])
        if n
        else np.zeros((0, len(PANEL_FEATURES)))
    )


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
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
    return p


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
        z: np.ndarray = ((np.asarray(x, dtype=np.float64)[:, idx] - self.mean) / self.scale) @ self.coef + self.intercept
        return z

    def raw_coef(self) -> dict[str, float]:
        """Coefficient per unit of each feature (the sign the monotone check reads)."""
        return {c: float(w / s) for c, w, s in zip(self.columns, self.coef, self.scale)}

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Linear:
        return cls(
            tuple(d["columns"]),
            np.asarray(d["mean"], float),
            np.asarray(d["scale"], float),
            np.asarray(d["coef"], float),
            float(d["intercept"]),
        )

    @classmethod
    def constant(cls, rate: float) -> Linear:
        rate = float(np.clip(rate, 1e-4, 1 - 1e-4))
        return cls((), np.zeros(0), np.ones(0), np.zeros(0), math.log(rate / (1 - rate)))


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
        gain: np.ndarray = p[:, 0] - p[:, 1]
        return gain

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MODEL_VERSION,
            "feature_names": list(PANEL_FEATURES),
            "lm": self.lm.to_json(),
            "doubt": list(self.doubt),
            "human": self.human.to_json(),
            "panels": self.panels.tolist(),
            "spread": self.spread.tolist(),
            "fallback_distance": self.fallback_distance,
            "human_rate": self.human_rate,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PanelCorrectionModel:
        if tuple(d.get("feature_names", ())) != PANEL_FEATURES:
            raise ValueError(f"model reads features {d.get('feature_names')}, this code computes {list(PANEL_FEATURES)}")
        return cls(
            Linear.from_json(d["lm"]),
            (float(d["doubt"][0]), float(d["doubt"][1])),
            Linear.from_json(d["human"]),
            np.asarray(d["panels"], float).reshape(-1, 3),
            np.asarray(d["spread"], float),
            float(d["fallback_distance"]),
            float(d.get("human_rate", 0.0)),
            dict(d.get("metrics", {})),
        )


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


# The recommended feature set (benchmarks/panel_study.py, docs/EVALUATION.md "Panel shift"): the judge's
# own signals, the disagreement share, and the two text features of the served model; length-direction
# features (LM picked the shorter, |log length ratio|) and prompt length did not transfer at 50%.
RECOMMENDED_COLUMNS: tuple[str, ...] = (
    "order_flip",
    "any_other",
    "disagree",
    "p_unsure",
    "p_missing",
    "word_overlap",
    "log_len_shorter",
)


BUNDLE_FILE = "panel_correction.json"


def panel_version(model: PanelCorrectionModel | dict[str, Any]) -> str:
    """Name and version of a panel model (or its JSON), as the manifest and the routing summary show it:
    ``panel-correction/1@<12 hex of its JSON>``; the same fit gives the same version."""
    import hashlib
    import json

    d = model.to_json() if isinstance(model, PanelCorrectionModel) else model
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    return f"{d.get('version', MODEL_VERSION)}@{digest}"


def read_panel_correction(folder: Any) -> PanelCorrectionModel | None:
    """The bundle's ``panel_correction.json`` as a model (pure numpy), or None when the bundle has none."""
    from pathlib import Path

    from hybridpref.routing_model.bundle import read_json

    path = Path(folder) / BUNDLE_FILE
    return PanelCorrectionModel.from_json(read_json(Path(folder), BUNDLE_FILE)) if path.is_file() else None
