"""Learning from a campaign's returned human labels (issue 19), gRPC-free.

A campaign routes batches with the bundle's correction model (:class:`~hybridpref.routing_model.
panel_correction.PanelCorrectionModel`); the vendor buys the human labels and sends them back. This
module turns those labels into a better P(LM label wrong) for the campaign's next batches:

* :func:`refit_with_prior`: maximum a posteriori logistic regression on the returned labels with a
  Gaussian prior centred on the bundle model's coefficients (in its standardised feature space), the
  monotone constraints kept. With few labels the model stays the bundle's; with many, the campaign's
  own panel and data decide how much each signal is worth. Selection of the labelled rows depends only
  on the features (routing reads nothing else), so P(wrong | x) fitted on them stays consistent; the
  random exploration share covers the rows the model would never have sent to humans.
* :func:`annotator_error_rates`: Dawid-Skene (crowd-kit) per-annotator P(vote wrong) where pairs have
  several votes; :func:`with_human_rate` moves the model's P(human wrong) to the campaign's rate.
* :func:`exploration_mask`: a seeded random share of the human budget, outside the model's choice.
* :class:`ModelLineage`: versioned adapted models; a refit is promoted only when the campaign's
  returned labels, held out by cross-validation, say it is not worse than the bundle's (log loss).
* :class:`CorrectionsCalibrator`: the expected-corrections interval recalibrated with the realised
  corrections of the labelled batches (ratio of sums, its sampling spread, outcome noise).

Labels here are signs (+1 A, -1 B, 0 tie / no verdict) in the campaign's stored A/B orientation.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from hybridpref.routing_model.panel_correction import (
    MONOTONE,
    PANEL_FEATURES,
    Linear,
    PanelCorrectionModel,
    _sigmoid,
)

NO_VERDICT = PANEL_FEATURES.index("no_verdict")


# ---------------------------------------------------------------- refit / recalibrate


def lm_wrong_target(lm: np.ndarray, human: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, y): the returned labels usable to learn P(LM wrong) (a non-tie human label), and
    y = the LM label differs from it (a tie or missing LM verdict counts wrong)."""
    lm, human = np.asarray(lm), np.asarray(human)
    rows = np.flatnonzero(human != 0)
    return rows, (lm[rows] != human[rows])


# Columns a campaign may learn beyond the bundle's (prior centred on 0): they did not transfer across pools
# (their effect reverses between pools), but inside one campaign its own labels can say what they are worth.
ADAPT_EXTRA: tuple[str, ...] = ("lm_picked_shorter", "abs_log_len_ratio", "log_prompt_len", "all_disagree")


def refit_with_prior(
    model: PanelCorrectionModel,
    x: np.ndarray,
    y: np.ndarray,
    *,
    strength: float = 50.0,
    extra: Sequence[str] = ADAPT_EXTRA,
    nonneg: Sequence[str] = MONOTONE,
) -> PanelCorrectionModel:
    """The model's LM part refitted on returned labels ``x`` (n, F panel features), ``y`` (n,) LM wrong:
    maximum a posteriori logistic regression with the prior ``strength / 2 * |theta - theta_0|^2`` on the
    standardised coefficients and the intercept, ``theta_0`` = the bundle's coefficients (0 for the
    ``extra`` columns the bundle does not read; they are standardised on ``x``). ``strength`` ~ how many
    labels the bundle's opinion is worth. Rows without a verdict are left out (their probability is 1 by
    rule). Monotone columns stay >= 0."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = x[:, NO_VERDICT] < 0.5
    x, y = x[keep], y[keep]
    base = model.lm
    if not len(y):
        return model
    add = [c for c in extra if c not in base.columns]
    columns = tuple(base.columns) + tuple(add)
    idx = [PANEL_FEATURES.index(c) for c in columns]
    add_x = x[:, [PANEL_FEATURES.index(c) for c in add]] if add else np.zeros((len(y), 0))
    add_mean = add_x.mean(axis=0) if add else np.zeros(0)
    add_sd = add_x.std(axis=0) if add else np.zeros(0)
    mean = np.concatenate([base.mean, add_mean])
    scale = np.concatenate([base.scale, np.where(add_sd > 1e-9, add_sd, 1.0)])
    z = (x[:, idx] - mean) / scale
    m = z.shape[1]
    theta0 = np.concatenate([base.coef, np.zeros(len(add)), [base.intercept]])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = z @ theta[:m] + theta[m]
        g = _sigmoid(eta) - y
        d = theta - theta0
        return (
            float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * strength * d @ d),
            np.concatenate([z.T @ g, [g.sum()]]) + strength * d,
        )

    bounds = [(0.0, None) if c in nonneg else (None, None) for c in columns] + [(None, None)]
    start = np.array([max(t, b[0]) if b[0] is not None else t for t, b in zip(theta0, bounds)])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500})
    lm = Linear(columns, mean, scale, res.x[:m].copy(), float(res.x[m]))
    return replace(model, lm=lm, metrics={**model.metrics, "adapted_on": int(len(y)), "prior_strength": strength})


def annotator_error_rates(votes: Iterable[tuple[str, str, str]], *, n_iter: int = 100) -> dict[str, float]:
    """Dawid-Skene (crowd-kit) on (item, annotator, label) votes -> P(annotator's vote differs from the
    item's true label) per annotator, from the confusion matrices weighted by the class priors. Items
    with one vote carry no information on error rates and are dropped; {} when none has two."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    df = pd.DataFrame(list(votes), columns=["task", "worker", "label"])
    if df.empty:
        return {}
    multi = df.groupby("task")["worker"].transform("count") >= 2
    df = df[multi]
    if df.empty or df["label"].nunique() < 2:
        return {}
    with warnings.catch_warnings():  # crowd-kit 1.4 still uses pandas' deprecated inplace/copy keywords
        warnings.simplefilter("ignore")
        ds = DawidSkene(n_iter=n_iter).fit(df)
    priors: Any = ds.priors_  # pandas objects (crowd-kit's fitted state)
    errors: Any = ds.errors_
    out = {}
    for worker in df["worker"].unique():
        conf = errors.loc[worker]  # rows: observed label, columns: true label; P(observed | true)
        right = sum(float(priors[t]) * float(conf.loc[t, t]) for t in priors.index if t in conf.index)
        out[str(worker)] = float(np.clip(1.0 - right, 0.0, 1.0))
    return out


def with_human_rate(model: PanelCorrectionModel, rate: float) -> PanelCorrectionModel:
    """The model with P(human vote wrong) moved to ``rate`` on average: the human logit's intercept is
    shifted so that the training rate's logit becomes ``rate``'s (the feature effects are kept)."""
    rate = float(np.clip(rate, 1e-3, 1 - 1e-3))
    old = float(np.clip(model.human_rate if model.human_rate > 0 else 0.1, 1e-3, 1 - 1e-3))
    shift = math.log(rate / (1 - rate)) - math.log(old / (1 - old))
    h = model.human
    return replace(model, human=Linear(h.columns, h.mean, h.scale, h.coef, h.intercept + shift), human_rate=rate)


# ---------------------------------------------------------------- exploration


def exploration_mask(priority: np.ndarray, count: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Human mask of ``count`` rows: ``count - round(share * count)`` by ``priority`` (highest first),
    the rest drawn uniformly (seeded) among the others. Returns (human mask, exploration mask)."""
    n = len(priority)
    count = int(min(max(count, 0), n))
    explore = int(round(share * count))
    order = np.argsort(-np.asarray(priority, dtype=np.float64), kind="stable")
    chosen = order[: count - explore]
    human = np.zeros(n, dtype=bool)
    human[chosen] = True
    rest = np.flatnonzero(~human)
    picked = (
        np.random.default_rng([int(seed), 0xE7]).choice(rest, min(explore, len(rest)), replace=False)
        if explore
        else np.zeros(0, int)
    )
    explored = np.zeros(n, dtype=bool)
    explored[picked] = True
    return human | explored, explored


# ---------------------------------------------------------------- versioned models and promotion


def log_loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    y = np.asarray(y, dtype=np.float64)
    loss: np.ndarray = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return loss


@dataclass
class ModelVersion:
    version: str
    model: PanelCorrectionModel
    labels: int  # returned labels it was fitted on (0 = the bundle's model)
    heldout_loss: float | None = None  # cross-validated log loss of its recipe on the returned verdict labels
    bundle_loss: float | None = None  # the bundle model's log loss on the same labels
    promoted: bool = False


@dataclass
class ModelLineage:
    """The models a campaign has routed with; ``current`` routes. :meth:`propose` refits on every
    returned label so far (:func:`refit_with_prior`) and promotes the refit when held-out returned labels
    say it is not worse: ``folds``-fold cross-validation over the instance ids (hashed, stable), each fold
    predicted by the recipe fitted without it, mean log loss on verdict rows <= the bundle model's on the
    same rows (which never saw them), with at least ``min_labels`` verdict labels."""

    bundle: PanelCorrectionModel
    strength: float = 50.0
    min_labels: int = 30
    folds: int = 5
    versions: list[ModelVersion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.versions:
            self.versions.append(ModelVersion("bundle", self.bundle, 0, promoted=True))

    @property
    def current(self) -> ModelVersion:
        return next(v for v in reversed(self.versions) if v.promoted)

    def propose(self, ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> ModelVersion:
        """``ids`` / ``x`` / ``y``: every returned label so far (non-tie human label; y = LM wrong)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=bool)
        verdict = x[:, NO_VERDICT] < 0.5
        fit = refit_with_prior(self.bundle, x, y, strength=self.strength)
        version = ModelVersion(f"adapted-{len(self.versions)}", fit, int(verdict.sum()))
        if verdict.sum() >= self.min_labels:
            fold = fold_of(ids, self.folds)
            oof = np.zeros(len(y))
            for f in range(self.folds):
                held = fold == f
                if not held.any():
                    continue
                m = refit_with_prior(self.bundle, x[~held], y[~held], strength=self.strength)
                oof[held] = m.p_lm_wrong(x[held], 0.0)
            new = float(log_loss(oof[verdict], y[verdict]).mean())
            ref = float(log_loss(self.bundle.p_lm_wrong(x[verdict], 0.0), y[verdict]).mean())
            version.heldout_loss, version.bundle_loss = new, ref
            version.promoted = new <= ref
        self.versions.append(version)
        return version

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "version": v.version,
                "labels": v.labels,
                "heldout_loss": v.heldout_loss,
                "bundle_loss": v.bundle_loss,
                "promoted": v.promoted,
            }
            for v in self.versions
        ]


def out_of_fold_p(
    bundle: PanelCorrectionModel,
    ids: Sequence[str],
    x: np.ndarray,
    usable: np.ndarray,
    y: np.ndarray,
    *,
    strength: float,
    folds: int = 5,
) -> np.ndarray:
    """P(LM wrong) of every labelled row ``x`` (n, F) by the refit recipe fitted without the row's fold (folds by
    :func:`fold_of` of ``ids``, as the promotion check): what the adapted model predicts out of sample. ``usable``
    (n,) bool: rows with a non-tie human label, ``y`` (usable.sum(),) their LM-wrong targets (the refit's data)."""
    x = np.asarray(x, dtype=np.float64)
    fold = fold_of(ids, folds)
    rows = np.flatnonzero(usable)
    out = np.zeros(len(x))
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        train = fold[rows] != f
        m = refit_with_prior(bundle, x[rows[train]], np.asarray(y)[train], strength=strength)
        out[held] = m.p_lm_wrong(x[held], 0.0)
    return out


def fold_of(instance_ids: Sequence[str], folds: int, salt: str = "promotion") -> np.ndarray:
    """(n,) fold id per instance id by a stable hash (the same id is in the same fold at every refit)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}|{i}".encode(), digest_size=4).digest(), "little") % folds for i in instance_ids],
        dtype=np.int64,
    )


# ---------------------------------------------------------------- expected corrections


@dataclass
class Interval:
    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class _Ratio:
    predicted: list[float] = field(default_factory=list)
    realised: list[float] = field(default_factory=list)

    def fit(self, min_labels: int) -> tuple[float, float] | None:
        """(r, standard error of r) of ``sum(realised) / sum(predicted)`` (delta method), None before ``min_labels``."""
        n = len(self.predicted)
        if n < min_labels:
            return None
        p, o = np.array(self.predicted), np.array(self.realised)
        total = max(float(p.sum()), 1e-9)
        r = float(o.sum()) / total
        se = float(np.sqrt(n * np.var(o - r * p, ddof=1))) / total
        return r, se


@dataclass
class CorrectionsCalibrator:
    """Expected corrections of a batch (sum of per-row probabilities that the bought label changes the
    LM label), recalibrated with what the campaign's labelled batches realised, per stratum (rows with and
    without an LM verdict: a bought label "corrects" a missing verdict whenever the human is not tied, a
    rate of the annotators, not of the model): ratio ``r = sum(realised) / sum(predicted)``, its spread by
    the delta method, and the batch's outcome noise. A stratum with fewer than ``min_labels`` labels keeps
    the bundle's transfer range (``prior_range``), as the router's summary does today."""

    prior_range: tuple[float, float] = (0.35, 1.91)
    min_labels: int = 30
    level: float = 0.9
    strata: dict[bool, _Ratio] = field(default_factory=lambda: {False: _Ratio(), True: _Ratio()})
    misses: list[float] = field(default_factory=list)  # per labelled batch: (realised - estimate)^2 / variance

    def observe(self, p: np.ndarray, realised: np.ndarray, no_verdict: np.ndarray | None = None) -> None:
        """One labelled batch, per row: predicted probability of a correction, 1/0 whether it happened,
        and whether the LM gave no verdict there. The batch's own miss (realised - what :meth:`interval`
        said before it) feeds the overdispersion factor."""
        p, o = np.asarray(p, dtype=np.float64), np.asarray(realised, dtype=np.float64)
        nv = np.zeros(len(p), bool) if no_verdict is None else np.asarray(no_verdict, dtype=bool)
        est, var, fitted = self._parts(p, nv)
        if fitted and var > 0:
            self.misses.append((float(o.sum()) - est) ** 2 / var)
        for key in (False, True):
            self.strata[key].predicted += p[nv == key].tolist()
            self.strata[key].realised += o[nv == key].tolist()

    def dispersion(self) -> float:
        """Variance inflation >= 1: mean squared standardised miss of past batches (rows of one batch share
        prompts and sources, so counts vary more than independent rows would); 1 before 3 batches."""
        return max(1.0, float(np.mean(self.misses))) if len(self.misses) >= 3 else 1.0

    def _parts(self, p: np.ndarray, nv: np.ndarray) -> tuple[float, float, bool]:
        """(estimate, variance, every stratum recalibrated) without the prior-range widening."""
        est = var = 0.0
        fitted_all = True
        for key in (False, True):
            q = p[nv == key]
            mu = float(q.sum())
            fitted = self.strata[key].fit(self.min_labels)
            if fitted is None:
                fitted_all = fitted_all and not len(q)
                est += mu
                var += float(np.sum(q * (1 - q)))
                continue
            r, se = fitted
            qq = np.clip(r * q, 0.0, 1.0)
            est += float(qq.sum())
            var += float(np.sum(qq * (1 - qq))) + (se * mu) ** 2
        return est, var, fitted_all

    def interval(self, p: np.ndarray, no_verdict: np.ndarray | None = None) -> Interval:
        """Interval (level ``level``) for the number of corrections among rows with predicted probabilities ``p``."""
        p = np.asarray(p, dtype=np.float64)
        nv = np.zeros(len(p), bool) if no_verdict is None else np.asarray(no_verdict, dtype=bool)
        z = NormalDist().inv_cdf(0.5 + self.level / 2)
        est, var, _ = self._parts(p, nv)
        low_extra = high_extra = 0.0
        for key in (False, True):  # strata still on the bundle's transfer range
            if self.strata[key].fit(self.min_labels) is None:
                mu = float(p[nv == key].sum())
                low_extra += (1 - self.prior_range[0]) * mu
                high_extra += (self.prior_range[1] - 1) * mu
        sd = math.sqrt(var * self.dispersion())
        return Interval(est, max(0.0, est - z * sd - low_extra), min(float(len(p)), est + z * sd + high_extra))


# ---------------------------------------------------------------- from the campaign store


_PREFERENCE_SIGN = {"A": 1, "B": -1, "tie": 0}
_LM_LABEL_SIGN = {"A_MUCH_BETTER": 1, "A_BETTER": 1, "B_BETTER": -1, "B_MUCH_BETTER": -1}


@dataclass
class ReturnedLabels:
    """A campaign's returned labels as the refit reads them: aligned (n,) arrays over labelled pairs."""

    ids: list[str]
    x: np.ndarray  # (n, F) panel features (from the candidate's ``features``; missing names = 0)
    lm: np.ndarray  # (n,) LM label sign (0: tie / no verdict / none)
    human: np.ndarray  # (n,) majority of the returned votes (0: tie or no majority)
    exploration: np.ndarray  # (n,) bool: routed by the random exploration share
    votes: list[tuple[str, str, str]]  # (instance id, annotator, preference) for Dawid-Skene


def returned_labels(rows: Iterable[tuple[Any, Any, Sequence[Any]]]) -> ReturnedLabels:
    """Turn ``CampaignStore.returned_labels`` rows (``Candidate``, ``StoredDecision``, ``[HumanLabel]``: the
    store contract's shapes, read by attribute) into :class:`ReturnedLabels`. The candidate's ``features``
    dict holds the panel features by name (what the router stored when it routed the batch)."""
    ids, xs, lm, human, explore, votes = [], [], [], [], [], []
    for cand, decision, labels in rows:
        if not labels:
            continue
        ids.append(cand.instance_id)
        xs.append([float(cand.features.get(name, 0.0)) for name in PANEL_FEATURES])
        lm.append(_LM_LABEL_SIGN.get(cand.lm_label or "", 0))
        signs = [_PREFERENCE_SIGN[lab.preference] for lab in labels]
        a, b, t = signs.count(1), signs.count(-1), signs.count(0)
        human.append(1 if a > max(b, t) else -1 if b > max(a, t) else 0)
        explore.append(bool(decision.exploration))
        votes += [(cand.instance_id, lab.annotator, lab.preference) for lab in labels]
    return ReturnedLabels(
        ids,
        np.asarray(xs, dtype=np.float64).reshape(-1, len(PANEL_FEATURES)),
        np.asarray(lm, dtype=np.int8),
        np.asarray(human, dtype=np.int8),
        np.asarray(explore, dtype=bool),
        votes,
    )


def adapt(lineage: ModelLineage, labels: ReturnedLabels) -> ModelVersion:
    """One refit-and-promotion step on everything a campaign has returned (:meth:`ModelLineage.propose`
    on the pairs with a non-tie human majority)."""
    rows, y = lm_wrong_target(labels.lm, labels.human)
    return lineage.propose([labels.ids[i] for i in rows], labels.x[rows], y)
