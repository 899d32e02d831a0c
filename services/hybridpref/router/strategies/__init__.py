"""Routing strategies: pure, vectorised functions from a tag matrix and a budget to a human mask.

The registry :data:`STRATEGIES` is the one place that says what a strategy is and what it needs
(:class:`StrategySpec`); the router core and the evaluation harness both read it, and both route
through :func:`route`. The strategies live by family:

* :mod:`.baselines`: ``all_human``, ``all_lm``, ``random`` (reference points);
* :mod:`.paper`: ``topk``, ``simulated``, ``optimal_pos`` (the paper, on the PPM);
* :mod:`.greedy`: ``greedy`` (marginal gain under the quadratic PPM, re-evaluated as the mix grows);
* :mod:`.judge`: ``judge_aware`` (PPM gain rank plus the judge's doubt), ``judge_doubt`` (the doubt alone);
* :mod:`.expected`: ``expected_gain`` (expected corrections per unit of human cost) and ``hybrid``
  (the same, the PPM's gain breaking ties when the batch is in the PPM's domain; :data:`DEFAULT_STRATEGY`);
* :mod:`.base`: what they share (:class:`RoutingContext`, :class:`RoutingResult`, options, selection).

Inputs every strategy sees (:class:`RoutingContext`):

* ``tags`` (n, V) uint8 0/1: the tag matrix, columns in the order the scorer reads (the
  canonical vocabulary in production);
* ``budget``: a :class:`~hybridpref.router.budget.ResolvedBudget` (count, cost or auto);
* ``scorer``: a :class:`~hybridpref.router.scoring.QuadraticScorer` (the PPM), ``pool_size = n``;
* ``seed``: every random choice derives from it; same inputs + seed = same decisions;
* judge signals: ``signals`` (:class:`~hybridpref.common.signals.JudgeSignals`: label, p_a,
  order flip, agreement with other judges) and/or the older ``judge_confidence`` (n,) in [0, 1]
  and ``judge_inconsistent`` (n,) bool;
* ``expected_gain`` (n,): expected label corrections per human label, from the bundle's
  expected-correction model (:mod:`hybridpref.routing_model.correction`);
* ``ppm_in_domain``: whether the batch is in the PPM's training domain (``domain.json``).

Budgets per strategy:

* count: exactly ``count`` instances (``optimal_pos``: at most, positive gains only);
* cost: instances in the strategy's order (gain per unit cost for predictor strategies) while
  they fit, skipping the ones that do not (greedy knapsack fill); the total never exceeds it;
* auto: ``topk``/``optimal_pos`` route every positive solo gain, ``greedy`` stops when no
  marginal gain is positive, ``judge_aware``/``judge_doubt`` route the judge's doubts (see
  :class:`JudgeAwareOptions`), ``expected_gain``/``hybrid`` route every instance whose expected
  gain per unit cost exceeds ``ExpectedGainOptions.auto_threshold`` (a human label is worth buying
  when it is expected to fix at least that many labels per unit of cost; costs are normalised to
  mean 1); ``random``/``simulated`` reject it (``InvalidInput``);
* ``all_human``/``all_lm`` ignore the budget (they are the reference points).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from hybridpref.common.signals import JudgeSignals
from hybridpref.router.budget import ResolvedBudget
from hybridpref.router.scoring import QuadraticScorer, mix_counts
from hybridpref.router.strategies import baselines, expected, judge, paper
from hybridpref.router.strategies import greedy as greedy_family
from hybridpref.router.strategies.base import (
    ExpectedGainOptions,
    GreedyOptions,
    JudgeAwareOptions,
    RoutingContext,
    RoutingResult,
    ScoreFn,
    StrategyFn,
    marginal_gains,
)
from hybridpref.router.strategies.judge import confidence_doubt, signal_doubt
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput, NotReady, quote

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "ExpectedGainOptions",
    "GreedyOptions",
    "JudgeAwareOptions",
    "RoutingContext",
    "RoutingResult",
    "StrategySpec",
    "campaign_strategy_spec",
    "confidence_doubt",
    "marginal_gains",
    "route",
    "scores",
    "signal_doubt",
    "strategy_spec",
]

PredictorUse = Literal["none", "required", "optional", "in_domain"]


@dataclass(frozen=True)
class StrategySpec:
    """A strategy and everything the router and the evaluation need to know about it.

    ``predictor``: how it uses the PPM: ``"required"`` (cannot run without it; its gains are PPM gains,
    which the router explains with top tags), ``"optional"`` (ranks with it when given, runs on the
    judge's doubt alone without; the evaluation runs it only with a PPM), ``"in_domain"`` (reads it only
    when the batch is inside the PPM's training domain), ``"none"``.
    ``needs_judge_first``: the judge labels every instance *before* routing (its signals are inputs);
    otherwise only the LM-routed instances are judged, after routing. ``needs_expected_gain``: reads the
    expected-correction model's gains (the bundle must have one). ``needs_judge``: the judge labels
    anything at all (``all_human`` sends everything to humans).
    ``score``: its per-instance score (higher = more worth a human label), which a campaign's spending policy
    ranks by across batches (:func:`scores`); ``None`` for the strategies that have no such score
    (``all_human``, ``all_lm``: they ignore budgets; ``simulated``: its mixes are random draws).
    """

    name: str
    fn: StrategyFn
    description: str
    predictor: PredictorUse = "none"
    needs_judge_first: bool = False
    needs_expected_gain: bool = False
    needs_judge: bool = True
    score: ScoreFn | None = None

    @property
    def needs_predictor(self) -> bool:
        """Whether it cannot run without a PPM."""
        return self.predictor == "required"

    def needs_tags(self, has_ppm: bool, ppm_in_domain: bool) -> bool:
        """Whether its decisions read the tag matrix: only through the PPM (``required`` always; ``optional``
        when a PPM is loaded; ``in_domain`` when the batch is inside the PPM's domain). Every other input
        (judge signals, correction features, domain check) comes from the texts and the judge, so the router
        skips the tagger for the others (docs/EVALUATION.md: the tagger's features buy no accuracy)."""
        if self.predictor == "required":
            return True
        if self.predictor == "optional":
            return has_ppm
        return self.predictor == "in_domain" and has_ppm and ppm_in_domain

    @property
    def routes_campaigns(self) -> bool:
        """Whether it can route a campaign: it has a per-instance ``score`` (see :func:`scores`)."""
        return self.score is not None


STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        # Reference points first, then the rest in the order the evaluation reports them.
        StrategySpec("all_human", baselines.all_human, "every instance to humans (baseline; budget ignored)", needs_judge=False),
        StrategySpec("all_lm", baselines.all_lm, "every instance to the LM judge (baseline; budget ignored)"),
        StrategySpec(
            "random", baselines.random_subset, "a seeded random subset at the budget (baseline)", score=baselines.random_score
        ),
        StrategySpec(
            "judge_doubt",
            judge.judge_doubt,
            "the judge's own doubt: no verdict / order flip, disagreement between judges, low confidence",
            needs_judge_first=True,
            score=judge.judge_doubt_score,
        ),
        StrategySpec(
            "topk",
            paper.topk,
            "paper: the instances with the largest solo gain f(t_i) - f(0)",
            "required",
            score=paper.solo_gain_score,
        ),
        StrategySpec("simulated", paper.simulated, "paper: best of N tag-walk candidate mixes at the budget", "required"),
        StrategySpec(
            "greedy",
            greedy_family.greedy,
            "marginal gain under the quadratic PPM, re-evaluated as the mix grows",
            "required",
            score=paper.solo_gain_score,
        ),
        StrategySpec(
            "optimal_pos",
            paper.optimal_pos,
            "paper: every instance with a positive solo gain",
            "required",
            score=paper.solo_gain_score,
        ),
        StrategySpec(
            "judge_aware",
            judge.judge_aware,
            "PPM gain rank plus the judge's doubt (its real signals: no verdict, order flips, disagreement, confidence)",
            "optional",
            needs_judge_first=True,
            score=judge.judge_aware_score,
        ),
        StrategySpec(
            "expected_gain",
            expected.expected_gain,
            "expected label corrections per unit of human cost (expected-correction model)",
            needs_judge_first=True,
            needs_expected_gain=True,
            score=expected.expected_gain_score,
        ),
        StrategySpec(
            "hybrid",
            expected.hybrid,
            "expected_gain, the PPM's gain breaking ties when the batch is in the PPM's domain",
            "in_domain",
            needs_judge_first=True,
            needs_expected_gain=True,
            score=expected.hybrid_score,
        ),
    )
}
# Chosen by the cross-pool evaluation (docs/EVALUATION.md).
DEFAULT_STRATEGY = "hybrid"


def strategy_spec(name: str) -> StrategySpec:
    """The registered strategy called ``name``; the one check of a strategy name (``config.strategy``)."""
    spec = STRATEGIES.get(name)
    if spec is None:
        raise InvalidInput(
            FieldViolation("config.strategy", f"unknown strategy {quote(name)}; use one of {', '.join(STRATEGIES)}")
        )
    return spec


def campaign_strategy_spec(name: str, field: str = "strategy") -> StrategySpec:
    """The registered strategy called ``name`` that can route a campaign (it has a ``score``); ``field``
    names the bad field in the ``InvalidInput``."""
    spec = STRATEGIES.get(name)
    able = [s.name for s in STRATEGIES.values() if s.routes_campaigns]
    if spec is None or not spec.routes_campaigns:
        why = "unknown strategy" if spec is None else "strategy has no per-instance score to spend a campaign's budget by:"
        raise InvalidInput(FieldViolation(field, f"{why} {quote(name)}; a campaign routes with one of {', '.join(able)}"))
    return spec


def scores(
    strategy: str,
    tag_matrix: np.ndarray,
    budget: ResolvedBudget,
    *,
    scorer: QuadraticScorer | None,
    seed: int,
    expected_gain: np.ndarray | None = None,
    signals: JudgeSignals | None = None,
    ppm_in_domain: bool = False,
    judge_aware: JudgeAwareOptions | None = None,
    expected_gain_options: ExpectedGainOptions | None = None,
) -> np.ndarray:
    """Each instance's score under ``strategy`` (its :class:`StrategySpec` ``score``) -> (n,) finite float64,
    higher = more worth a human label: what a campaign's spending policy ranks by across batches.

    Inputs as :func:`route`; ``budget``: ``auto`` or ``count`` (scores as they are) or ``cost`` (per unit of
    human cost: ``budget.costs``). Raises ``InvalidInput`` for a strategy without a score, ``NotReady`` when
    an input it reads is missing."""
    spec = campaign_strategy_spec(strategy, "config.strategy")
    tags = _check_tags(tag_matrix, budget)
    if spec.needs_predictor and scorer is None:
        raise NotReady(f"strategy {spec.name!r} needs the predictor (no model bundle loaded or predictor unreachable)")
    if scorer is not None:
        _check_width(scorer, tags.shape[1])
    if spec.needs_expected_gain:
        _check_expected_gain(expected_gain, len(tags))
    elif spec.needs_judge_first:
        _check_judge(None, None, len(tags), signals)
    ctx = RoutingContext(
        tags,
        budget,
        scorer,
        int(seed),
        judge_aware=judge_aware or JudgeAwareOptions(),
        expected_gain=expected_gain,
        signals=signals,
        ppm_in_domain=bool(ppm_in_domain),
        expected_gain_options=expected_gain_options or ExpectedGainOptions(),
    )
    with _one_blas_thread():
        out = np.asarray(spec.score(ctx), dtype=np.float64)  # type: ignore[misc]
    # Scores are stored and compared across batches: a NaN would poison the campaign's threshold.
    return np.where(np.isfinite(out), out, np.where(np.isnan(out), 0.0, np.sign(out) * 1e300))


def route(
    strategy: str,
    tag_matrix: np.ndarray,
    budget: ResolvedBudget,
    *,
    scorer: QuadraticScorer | None,
    seed: int,
    judge_confidence: np.ndarray | None = None,
    judge_inconsistent: np.ndarray | None = None,
    simulated_candidates: int = 500,
    simulated_sampler: str = "tag_walk",
    greedy: GreedyOptions | None = None,
    judge_aware: JudgeAwareOptions | None = None,
    deadline: Deadline | None = None,
    expected_gain: np.ndarray | None = None,
    signals: JudgeSignals | None = None,
    ppm_in_domain: bool = False,
    expected_gain_options: ExpectedGainOptions | None = None,
) -> RoutingResult:
    """Route a batch: decide, per instance, human (True) or LM (False).

    ``strategy``: a name in :data:`STRATEGIES`; ``tag_matrix`` (n, V) 0/1 (uint8 or bool; V = the scorer's
    width); ``budget`` from :func:`~hybridpref.router.budget.resolve_budget` for the same n. Which of the
    other inputs a strategy reads, its :class:`StrategySpec` says. ``deadline``: the call's ``Deadline``; long
    strategies check it between rounds and raise ``DeadlineExceeded`` (or ``Cancelled``).

    Raises ``InvalidInput`` (unknown strategy, bad shapes, auto budget for random/simulated),
    ``NotReady`` (the strategy needs a scorer, or the judge's signals, that were not given).
    """
    spec = strategy_spec(strategy)
    tags = _check_tags(tag_matrix, budget)
    if spec.needs_predictor and scorer is None:
        raise NotReady(f"strategy {spec.name!r} needs the predictor (no model bundle loaded or predictor unreachable)")
    if scorer is not None:
        _check_width(scorer, tags.shape[1])
    if spec.needs_expected_gain:
        _check_expected_gain(expected_gain, len(tags))
    elif spec.needs_judge_first:
        _check_judge(judge_confidence, judge_inconsistent, len(tags), signals)
    if simulated_sampler not in ("tag_walk", "uniform"):
        raise InvalidInput(FieldViolation("simulated_sampler", f"use 'tag_walk' or 'uniform', got {simulated_sampler!r}"))
    ctx = RoutingContext(
        tags,
        budget,
        scorer,
        int(seed),
        judge_confidence,
        judge_inconsistent,
        int(simulated_candidates) or 500,
        simulated_sampler,
        greedy or GreedyOptions(),
        judge_aware or JudgeAwareOptions(),
        deadline,
        expected_gain=expected_gain,
        signals=signals,
        ppm_in_domain=bool(ppm_in_domain),
        expected_gain_options=expected_gain_options or ExpectedGainOptions(),
    )
    with _one_blas_thread():
        mask, gains = spec.fn(ctx)
        predicted = None
        if scorer is not None and len(tags):
            predicted = float(scorer.score(mix_counts(tags, mask)[None, :], len(tags))[0])
    return RoutingResult(np.asarray(mask, dtype=bool), np.asarray(gains, dtype=np.float64), spec.name, predicted, dict(ctx.info))


def _one_blas_thread() -> AbstractContextManager[object]:
    """Routing runs with one BLAS thread: its heavy passes are table look-ups (``packed``), and
    the BLAS products left are small, where thread wake-ups cost more than they save (measured:
    3.5x slower for 7,000 x 90 on 2 busy cores; 78 tiny table products went from 0.1 s to 1.9 s).
    Requests run concurrently in the service, which is where the cores go."""
    limits: AbstractContextManager[object] = threadpool_limits(limits=1, user_api="blas")
    return limits


def _check_tags(tag_matrix: np.ndarray, budget: ResolvedBudget) -> np.ndarray:
    tags = np.asarray(tag_matrix)
    if tags.ndim != 2:
        raise InvalidInput(FieldViolation("tag_matrix", f"expected a 2-D (instances, tags) matrix, got shape {tags.shape}"))
    if len(tags) != budget.n:
        raise InvalidInput(FieldViolation("tag_matrix", f"{len(tags)} rows but the budget was resolved for {budget.n} instances"))
    if tags.dtype != np.uint8:
        if tags.dtype != bool and len(tags) and not np.isin(tags, (0, 1)).all():
            raise InvalidInput(FieldViolation("tag_matrix", "tags must be 0/1"))
        tags = tags.astype(np.uint8)
    elif len(tags) and tags.max(initial=0) > 1:
        raise InvalidInput(FieldViolation("tag_matrix", "tags must be 0/1"))
    return tags


def _check_width(scorer: QuadraticScorer, width: int) -> None:
    if scorer.num_tags != width:
        raise InvalidInput(FieldViolation("tag_matrix", f"has {width} tag columns; the predictor reads {scorer.num_tags}"))


def _check_expected_gain(gain: np.ndarray | None, n: int) -> None:
    if gain is None:
        raise NotReady(
            "this strategy needs the expected-correction model's gains for every instance (bundle with correction.onnx; run the judge first)"
        )
    g = np.asarray(gain, dtype=np.float64)
    if g.shape != (n,) or not np.isfinite(g).all() or (np.abs(g) > 1).any():
        raise InvalidInput(FieldViolation("expected_gain", f"expected ({n},) finite values in [-1, 1]"))


def _check_judge(
    confidence: np.ndarray | None, inconsistent: np.ndarray | None, n: int, signals: JudgeSignals | None = None
) -> None:
    if signals is not None:
        if len(signals) != n:
            raise InvalidInput(FieldViolation("signals", f"{len(signals)} rows for {n} instances"))
        return
    if confidence is None:
        raise NotReady("this strategy needs the judge's signals (or confidence) for every instance; run the judge first")
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.shape != (n,) or not np.isfinite(conf).all() or (conf < 0).any() or (conf > 1).any():
        raise InvalidInput(FieldViolation("judge_confidence", f"expected ({n},) values in [0, 1]"))
    if inconsistent is not None and np.shape(inconsistent) != (n,):
        raise InvalidInput(FieldViolation("judge_inconsistent", f"expected ({n},) booleans"))
