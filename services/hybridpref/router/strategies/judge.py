"""Strategies that read the judge's own signals: ``judge_aware`` (PPM gain rank plus the judge's doubt) and
``judge_doubt`` (the doubt alone), with the doubt measures they share."""

from __future__ import annotations

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref.router.strategies.base import RoutingContext, per_unit_cost, percentile_rank, select_by_gain, static_gains


def judge_aware(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """PPM gain plus the judge's doubt (see :class:`JudgeAwareOptions`).

    An LM judge that flips its verdict when the responses swap places, or answers with low
    confidence, is likely wrong there: a human label is worth more on exactly those
    instances. Works without a scorer (then the judge's doubt alone decides).
    """
    opts = ctx.judge_aware
    doubt = _doubt(ctx)
    gains = static_gains(ctx) if ctx.scorer is not None else np.zeros(ctx.n)
    if ctx.budget.kind == "auto":
        mask = doubt >= opts.auto_doubt
        if ctx.scorer is not None:
            mask &= gains >= 0
        return mask, gains
    gain_rank = percentile_rank(gains) if ctx.scorer is not None else np.zeros(ctx.n)
    weight = opts.judge_weight if ctx.scorer is not None else 1.0
    priority = (1.0 - weight) * gain_rank + weight * doubt
    return select_by_gain(ctx, priority), gains


def judge_aware_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of ``judge_aware``: its priority (the PPM gain's rank within the batch blended with the
    judge's doubt; the doubt alone without a PPM), per unit of cost under a cost budget."""
    doubt = _doubt(ctx)
    if ctx.scorer is None:
        return per_unit_cost(ctx, doubt)
    weight = ctx.judge_aware.judge_weight
    return per_unit_cost(ctx, (1.0 - weight) * percentile_rank(static_gains(ctx)) + weight * doubt)


def judge_doubt_score(ctx: RoutingContext) -> np.ndarray:
    """Campaign score of ``judge_doubt``: the judge's doubt (per unit of cost under a cost budget)."""
    return per_unit_cost(ctx, _doubt(ctx))


def judge_doubt(ctx: RoutingContext) -> tuple[np.ndarray, np.ndarray]:
    """Route where the judge doubts itself most (:func:`signal_doubt`; no predictor, no model):
    no verdict or an order flip first, then disagreement between several judges, then low
    confidence. Ties broken by a seeded random rank; under auto budgets, doubt >= ``auto_doubt``."""
    doubt = _doubt(ctx)
    if ctx.budget.kind == "auto":
        return doubt >= ctx.judge_aware.auto_doubt, doubt
    tie = ctx.rng(12).permutation(ctx.n) / max(1, ctx.n - 1)
    return select_by_gain(ctx, doubt + 1e-6 * tie), doubt


def signal_doubt(signals: JudgeSignals) -> np.ndarray:
    """Doubt in the LM label from the judge's signals -> (n,) float64 in [0, 1].

    1 where the judge gave no verdict (tie, unparsed) or flipped with the presentation order;
    otherwise the largest of ``1 - agreement`` with other judges (when recorded) and
    ``1 - |2 p_a - 1|`` (when the judge gives a probability), scaled to [0, 0.9] so a verdict never
    outranks a missing one; 0 when neither is known.
    """
    label = np.asarray(signals.label)
    agreement = np.asarray(signals.agreement, dtype=np.float64)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    disagree = np.where(np.isnan(agreement), 0.0, 1.0 - np.nan_to_num(agreement, nan=1.0))
    unsure = np.where(np.isnan(p_a), 0.0, 1.0 - np.abs(2.0 * np.nan_to_num(p_a, nan=0.5) - 1.0))
    doubt = 0.9 * np.clip(np.maximum(disagree, unsure), 0.0, 1.0)
    return np.where((label == 0) | np.asarray(signals.order_flip, dtype=bool), 1.0, doubt)


def _doubt(ctx: RoutingContext) -> np.ndarray:
    """The judge's doubt: from ``signals`` when given, else from confidence / inconsistency."""
    if ctx.signals is not None:
        return signal_doubt(ctx.signals)
    assert ctx.judge_confidence is not None  # route() refuses a judge strategy without either
    return confidence_doubt(ctx.judge_confidence, ctx.judge_inconsistent, ctx.judge_aware.inconsistent_doubt)


def confidence_doubt(confidence: np.ndarray, inconsistent: np.ndarray | None, inconsistent_doubt: float = 0.75) -> np.ndarray:
    """Probability-like doubt in the LM label, in [0, 1]: ``1 - confidence``, at least
    ``inconsistent_doubt`` where the judge was order-inconsistent -> (n,) float64."""
    doubt = 1.0 - np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    if inconsistent is not None:
        doubt = np.where(np.asarray(inconsistent, dtype=bool), np.maximum(doubt, inconsistent_doubt), doubt)
    return doubt
