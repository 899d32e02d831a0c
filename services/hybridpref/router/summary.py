"""The routing summary: predictions for the chosen mix and the references, each with its uncertainty.

Rules (docs/architecture.md, "What the summary claims"):

* A PPM score is shown only with its prediction interval, ``value +- z * residual_std`` (the bundle's
  cross-validated residual std); a bundle without one is "uncalibrated" and shows no score.
* Out of the bundle's domain (``hybridpref.routing_model.domain``: the largest standardised difference of
  the batch's text-feature means from the nearest pool the PPM was trained on, above the threshold
  calibrated on held-out pools) the PPM's scores are not shown either: their error there is unknown.
* The all-LM mix has x = 0 for every batch, so its PPM score is the intercept, the same number on
  every batch: it says nothing about this batch and is not shown ("batch_independent").
* Expected label corrections of a mix = sum over its human-routed instances of
  P(LM label wrong) - P(human label wrong). Per instance the net change is +1 with probability
  a = p_lm (1 - p_h), -1 with b = (1 - p_lm) p_h, else 0 (independent errors), so its variance is
  a + b - (a - b)^2; the normal interval over the sum covers the outcome randomness of a calibrated
  model. On a pool the model has not seen, the annotators' own tie and error rates move the realised
  count far more than that (measured leave-one-pool-out: realised / predicted from 0.35 to 1.9), so
  when the bundle records that ratio range (``correction.transfer_range``) the interval is widened by
  it: ``[min(low * r), max(high * r)]`` over r in the range, and a warning says so. The lower end
  is then clamped at 0 unless the expectation itself is negative (``shown_corrections``).
  ``random`` includes each instance with probability m / n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from threadpoolctl import threadpool_limits

from hybridpref.common.signals import JudgeSignals
from hybridpref.router.model import RoutingModel
from hybridpref.router.scoring import QuadraticScorer

INTERVAL_LEVEL = 0.9
MIXES = ("chosen", "all_human", "all_lm", "random")
# a judge is "unsure" on a pair when it flipped across orders, gave no side, or its p_a is within this of 0.5
UNSURE_MARGIN = 0.15
UNSURE_SHARE = 0.5
COV_SAMPLE = 65_536


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass
class MixPrediction:
    mix: str
    human_count: int
    score: Estimate | None = None
    score_note: str = ""  # why ``score`` is None (see router.proto MixPrediction.score_note)
    corrections: Estimate | None = None


@dataclass(frozen=True)
class DomainResult:
    distance: float
    threshold: float
    in_domain: bool
    nearest_pool: str
    distance_kind: str


@dataclass
class Summary:
    mixes: list[MixPrediction] = field(default_factory=list)
    level: float = INTERVAL_LEVEL
    domain: DomainResult | None = None
    warnings: list[str] = field(default_factory=list)
    # The correction model whose P(wrong) routed the batch and gave the expected corrections ("" when none
    # was read): name ("panel-correction/1", "correction/1") and exact version (a campaign's adapted version).
    correction_model: str = ""
    correction_version: str = ""


def column_totals(tag_matrix: np.ndarray) -> np.ndarray:
    """Per-tag instance counts of the batch (the all-human mix) -> (V,) float64; one pass over uint8."""
    totals: np.ndarray = np.asarray(tag_matrix).sum(axis=0, dtype=np.int64).astype(np.float64)
    return totals


def domain_check(model: RoutingModel | None, features: np.ndarray | None) -> DomainResult | None:
    """Distance of the batch (its (n, F) correction features) to the bundle's PPM training pools;
    None without domain statistics."""
    if model is None or model.domain is None or features is None or len(features) == 0:
        return None
    dist, nearest = model.domain.check(features)
    return DomainResult(dist, model.domain.threshold, bool(dist <= model.domain.threshold), nearest, model.domain.distance_kind)


def summarize(
    model: RoutingModel | None,
    tag_matrix: np.ndarray,
    human_mask: np.ndarray,
    *,
    domain: DomainResult | None,
    p_wrong: tuple[np.ndarray, np.ndarray] | None,
    signals: JudgeSignals | None,
    level: float = INTERVAL_LEVEL,
    totals: np.ndarray | None = None,
) -> Summary:
    """The summary of one routing; ``p_wrong`` = (P(LM wrong), P(human wrong)) per instance when computed."""
    n = len(tag_matrix)
    mask = np.asarray(human_mask, dtype=bool)
    m = int(mask.sum())
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = Summary(level=level, domain=domain)
    counts = {"chosen": m, "all_human": n, "all_lm": 0, "random": m}
    out.mixes = [MixPrediction(name, counts[name]) for name in MIXES]
    with threadpool_limits(limits=1, user_api="blas"):  # small products: BLAS threads would only contend
        _scores(out, model, tag_matrix, mask, z, column_totals(tag_matrix) if totals is None else totals)
    transfer = correction_transfer(model) if p_wrong is not None else None
    _corrections(out, p_wrong, mask, z, transfer)
    out.warnings.extend(_warnings(out, model, p_wrong, signals))
    if transfer is not None:
        out.warnings.append(
            f"expected corrections: on pools the correction model did not see, realised corrections were {transfer[0]:.2f}x "
            f"to {transfer[1]:.2f}x its prediction (annotators' tie and error rates differ); the intervals include that range"
        )
    return out


def correction_transfer(model: RoutingModel | None) -> tuple[float, float] | None:
    """The realised / predicted correction ratio range the bundle measured on held-out pools for the correction
    model that routes (the panel model where the bundle has one, else the ONNX model), or None."""
    from hybridpref.routing_model.correction import transfer_range

    if model is None:
        return None
    if model.panel is not None:
        return transfer_range(getattr(model.panel.model, "metrics", {}) or {})
    if model.correction is None:
        return None
    return transfer_range(getattr(model.correction.model, "metrics", {}) or {})


def _scores(out: Summary, model: RoutingModel | None, tags: np.ndarray, mask: np.ndarray, z: float, totals: np.ndarray) -> None:
    note = ""
    if model is None:
        note = "no_predictor"
    elif model.scorer is None:
        note = "no_ppm"
    elif model.residual_std is None:
        note = "uncalibrated"
    elif out.domain is not None and not out.domain.in_domain:
        note = "out_of_domain"
    elif tags.shape[1] == 0:
        note = "not_tagged"  # the strategy read no tags, so the batch was not tagged and the PPM has no input
    if note or len(tags) == 0:
        for mix in out.mixes:
            mix.score_note = note or "empty_batch"
        return
    assert model is not None and model.scorer is not None and model.residual_std is not None  # else a note above
    values = ppm_values(model.scorer, tags, mask, totals)
    half = z * float(model.residual_std)
    for mix in out.mixes:
        if mix.mix == "all_lm":
            mix.score_note = "batch_independent"
            continue
        v = float(values[mix.mix])
        mix.score = Estimate(v, v - half, v + half)


def ppm_values(scorer: QuadraticScorer, tags: np.ndarray, mask: np.ndarray, totals: np.ndarray) -> dict[str, float]:
    """PPM scores of the chosen mix, all-human and the expected score of uniform random mixes of the
    same size: ``f(E x) + tr(Q Cov x)`` with ``Cov c = m (n - m) / (n - 1) * S`` (sampling without
    replacement; S = covariance of the tag rows). The covariance term is O(1/n); for batches above
    ``COV_SAMPLE`` rows S is estimated on a fixed-seed sample of that many rows (one pass less over n)."""
    n, m = len(tags), int(mask.sum())
    chosen = np.asarray(tags[mask]).sum(axis=0, dtype=np.int64).astype(np.float64)
    scores = scorer.score(np.vstack([chosen, totals]), n)
    b, w, q = scorer.quadratic_form()
    mean_row = totals / n
    mean_x = mean_row * m / n
    random = float(b + w @ mean_x + mean_x @ q @ mean_x)
    if n > 1 and 0 < m < n:
        rows = tags if n <= COV_SAMPLE else tags[np.sort(np.random.default_rng(0).choice(n, COV_SAMPLE, replace=False))]
        block = np.asarray(rows, dtype=np.float32)
        sample_mean = block.mean(axis=0, dtype=np.float64)
        pop_cov = (block.T @ block).astype(np.float64) / len(block) - np.outer(sample_mean, sample_mean)
        random += float(np.sum(q * pop_cov) * (m * (n - m) / (n - 1)) / n**2)
    return {"chosen": float(scores[0]), "all_human": float(scores[1]), "random": random}


def _corrections(
    out: Summary,
    p_wrong: tuple[np.ndarray, np.ndarray] | None,
    mask: np.ndarray,
    z: float,
    transfer: tuple[float, float] | None = None,
) -> None:
    if p_wrong is None:
        return
    p_lm, p_h = (np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) for p in p_wrong)
    a, b = p_lm * (1.0 - p_h), (1.0 - p_lm) * p_h
    n = len(mask)
    share = mask.sum() / n if n else 0.0
    include = {"chosen": mask.astype(np.float64), "all_human": np.ones(n), "all_lm": np.zeros(n), "random": np.full(n, share)}
    for mix in out.mixes:
        q = include[mix.mix]
        mean = float(np.sum(q * (a - b)))
        sd = math.sqrt(max(0.0, float(np.sum(q * (a + b) - q**2 * (a - b) ** 2))))
        mix.corrections = shown_corrections(Estimate(mean, mean - z * sd, mean + z * sd), transfer)


def shown_corrections(estimate: Estimate, transfer: tuple[float, float] | None) -> Estimate:
    """The expected-corrections interval as the summary shows it: widened by ``transfer``, and its
    lower end never below 0 unless the expectation itself is negative. The normal interval of a
    small or low-gain mix (``random`` at a small budget) reaches below 0, which reads as a negative
    count; a net loss is shown only when it is what the model expects (humans worse than the judge)."""
    wide = widen(estimate, transfer)
    return wide if wide.value < 0 else Estimate(wide.value, max(wide.low, 0.0), wide.high)


def widen(estimate: Estimate, transfer: tuple[float, float] | None) -> Estimate:
    """The interval scaled by every ratio in ``transfer`` (its hull, which still holds the value)."""
    if transfer is None:
        return estimate
    ends = [end * r for end in (estimate.low, estimate.high) for r in transfer]
    return Estimate(estimate.value, min(min(ends), estimate.low), max(max(ends), estimate.high))


def _warnings(
    out: Summary, model: RoutingModel | None, p_wrong: tuple[np.ndarray, np.ndarray] | None, signals: JudgeSignals | None
) -> list[str]:
    warnings: list[str] = []
    d = out.domain
    if d is not None and not d.in_domain:
        warnings.append(
            f"out of domain: the batch's text features (lengths, overlap) are {d.distance:.3f} ({d.distance_kind}) from "
            f"the PPM's nearest training pool ({d.nearest_pool}), above the calibrated threshold {d.threshold:.3f}: "
            "the PPM's predictions are not shown"
        )
    if model is not None and model.scorer is not None and model.residual_std is None:
        warnings.append("uncalibrated: the bundle records no PPM residual std, so no predicted score is shown")
    if model is not None and model.correction is None:
        warnings.append("the bundle has no expected-correction model: expected label corrections are not available")
    if model is not None and model.domain is None:
        warnings.append("the bundle records no training domain: whether this batch resembles its training pools is unknown")
    by_name = {mix.mix: mix for mix in out.mixes}
    chosen, random = by_name["chosen"], by_name["random"]
    if (
        chosen.score is not None
        and random.score is not None
        and chosen.score.low <= random.score.high
        and chosen.human_count < by_name["all_human"].human_count
    ):
        warnings.append("the PPM cannot tell the chosen mix from random routing at the same budget (their intervals overlap)")
    if (
        chosen.corrections is not None
        and random.corrections is not None
        and chosen.corrections.low <= random.corrections.high
        and 0 < chosen.human_count < by_name["all_human"].human_count
    ):
        warnings.append("expected corrections of the chosen mix are within the uncertainty of random routing at the same budget")
    if signals is not None:
        warnings.extend(judge_warnings(signals))
    return warnings


def unsure_mask(signals: JudgeSignals) -> np.ndarray:
    """(n,) bool: the judge was unsure of the pair (an order flip, a tie or no verdict, or a probability
    within ``UNSURE_MARGIN`` of 0.5)."""
    unsure = np.asarray(signals.order_flip, dtype=bool) | (np.asarray(signals.label) == 0)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    out: np.ndarray = unsure | (np.isfinite(p_a) & (np.abs(p_a - 0.5) < UNSURE_MARGIN))
    return out


# Kinds of summary warnings (the ``kind`` label of ``hybridpref_routing_warnings_total``), each with the
# start of its sentence; ``warning_kind`` maps a warning to its kind ("other" for none of these).
WARNING_KINDS: tuple[tuple[str, str], ...] = (
    ("out_of_domain", "out of domain:"),
    ("uncalibrated", "uncalibrated:"),
    ("no_correction_model", "the bundle has no expected-correction model"),
    ("no_domain", "the bundle records no training domain"),
    ("ppm_indistinct", "the PPM cannot tell the chosen mix from random"),
    ("corrections_indistinct", "expected corrections of the chosen mix are within"),
    ("judge_unsure", "the judge is unsure on most pairs"),
    ("correction_transfer", "expected corrections: on pools the correction model did not see"),
    ("ppm_fallback", "the PPM is outside its domain"),
    ("no_routing_model", "no routing model"),
    ("costs_untagged", "human costs not given were estimated from word counts"),
    ("campaign_model", "campaign: routed by"),
    ("instances_left_out", ""),  # "<n> invalid instances were left out ..." (matched below)
)


def warning_kind(text: str) -> str:
    """The kind of a summary warning (a bounded label value)."""
    for kind, start in WARNING_KINDS:
        if start and text.startswith(start):
            return kind
    if "invalid instances were left out" in text:
        return "instances_left_out"
    return "other"


def judge_warnings(signals: JudgeSignals, of: str = "") -> list[str]:
    """Warnings about the judge's own labels, whatever the strategy: a strategy that judges every pair
    first passes all of them, the others the LM-routed pairs they judged (``of`` names which)."""
    if not len(signals):
        return []
    share = float(np.mean(unsure_mask(signals)))
    if share <= UNSURE_SHARE:
        return []
    where = f" of {of}" if of else ""
    return [
        f"the judge is unsure on most pairs{where} ({share:.0%}: order flips, ties or near-even confidence): "
        "its labels are weak evidence here"
    ]
