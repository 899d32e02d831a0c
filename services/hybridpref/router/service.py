"""Routing orchestration: validate -> tag -> (judge) -> route -> judge LM-routed -> explain.

``RouterCore`` owns the request flow and the budget; it never computes features or
labels itself (tagger and judge do) and scores mixes through the predictor. The
strategies themselves are pure functions in ``hybridpref.router.strategies``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

from hybridpref.common.errors import FieldViolation, InvalidInput, NotReady
from hybridpref.common.instances import Label, PositionMode, PreferenceInstance, validate_instances
from hybridpref.common.metrics import Metrics
from hybridpref.common.settings import Settings
from hybridpref.common.vocabulary import LEXICAL_MEASURES
from hybridpref.router import budget as budgets
from hybridpref.router import strategies
from hybridpref.router.downstream import JudgeClient, PredictorClient, TaggedBatch, TaggerClient

log = structlog.get_logger()


@dataclass
class RouteOptions:
    """Request-level routing options (the core mirror of ``RouteConfig``)."""

    budget_kind: str  # fraction | count | cost | auto
    budget_value: float | int | bool
    strategy: str
    seed: int = 0
    judge_mode: PositionMode = PositionMode.UNSPECIFIED
    judge_template: str = ""
    replay_judge: str = ""
    explain_top_k: int = 3
    simulated_candidates: int = 500


@dataclass
class Decision:
    id: str
    human: bool
    lm_label: Label = Label.UNSPECIFIED
    lm_confidence: float = 0.0
    gain: float = 0.0
    top_tags: list[tuple[str, float]] = field(default_factory=list)
    judge_order_inconsistent: bool = False
    human_cost: float = 0.0


@dataclass
class RouteOutcome:
    decisions: list[Decision]
    strategy: str
    bundle_version: str
    human_cost: float
    predicted: dict[str, float]
    stage_seconds: dict[str, float]


class RouterCore:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics.default()
        self.tagger = TaggerClient(settings.tagger_address, settings)
        self.judge = JudgeClient(settings.judge_address, settings)
        self.predictor = PredictorClient(settings.predictor_address, settings)

    async def close(self) -> None:
        await self.tagger.close()
        await self.judge.close()
        self.predictor.close()

    def validate(self, instances: Sequence[PreferenceInstance], options: RouteOptions, streaming: bool = False) -> None:
        """All input checks before any work: nothing is half-processed. The batch-size
        limit applies to unary calls; the streaming form exists for larger batches."""
        violations: list[FieldViolation] = []
        try:
            validate_instances(instances, None if streaming else self.settings.max_batch)
        except InvalidInput as exc:
            violations.extend(exc.violations)
        if not instances:
            violations.append(FieldViolation("instances", "empty batch"))
        if options.strategy not in strategies.STRATEGIES:
            violations.append(FieldViolation(
                "config.strategy", f"unknown strategy {options.strategy!r}; expected one of {sorted(strategies.STRATEGIES)}"
            ))
        try:  # budget shape and range; real costs come after tagging
            budgets.resolve_budget(options.budget_kind, options.budget_value, len(instances), np.ones(len(instances)))
        except InvalidInput as exc:
            violations.extend(exc.violations)
        if violations:
            raise InvalidInput(violations)

    async def route(
        self, instances: Sequence[PreferenceInstance], options: RouteOptions, timeout: float | None, streaming: bool = False
    ) -> RouteOutcome:
        self.validate(instances, options, streaming)
        deadline = None if timeout is None else time.monotonic() + timeout
        left = lambda: None if deadline is None else max(0.001, deadline - time.monotonic())  # noqa: E731
        stages: dict[str, float] = {}
        n = len(instances)

        t0 = time.perf_counter()
        tagged = await self.tagger.tag(instances, left())
        stages["tag"] = time.perf_counter() - t0

        judged = None
        if strategies.needs_judge_first(options.strategy):
            t0 = time.perf_counter()
            judged = await self._judge(instances, options, left())
            stages["judge"] = time.perf_counter() - t0

        budget = budgets.resolve_budget(
            options.budget_kind, options.budget_value, n, _supplied_costs(instances), **_cost_inputs(tagged)
        )
        scorer, bundle_version = self._scorer(options.strategy, left())
        t0 = time.perf_counter()
        result = await _in_thread(
            strategies.route, options.strategy, tagged.tag_matrix, budget, scorer=scorer, seed=options.seed,
            judge_confidence=None if judged is None else judged.confidence,
            judge_inconsistent=None if judged is None else judged.inconsistent,
            simulated_candidates=options.simulated_candidates or 500,
        )
        stages["route"] = time.perf_counter() - t0

        decisions = [Decision(id=inst.id, human=bool(h), gain=float(g), human_cost=float(c))
                     for inst, h, g, c in zip(instances, result.human_mask, result.gains, budget.costs)]
        lm_rows = [i for i, d in enumerate(decisions) if not d.human]
        if judged is None and lm_rows:
            t0 = time.perf_counter()
            judged_lm = await self._judge([instances[i] for i in lm_rows], options, left())
            stages["judge"] = time.perf_counter() - t0
            _apply_judgements(decisions, lm_rows, judged_lm)
        elif judged is not None:
            _apply_judgements(decisions, list(range(n)), judged)

        predicted: dict[str, float] = {}
        if scorer is not None:
            t0 = time.perf_counter()
            predicted = await _in_thread(self._predictions, scorer, tagged, result, options, decisions)
            stages["predict"] = time.perf_counter() - t0
        self._count(decisions, options.strategy)
        return RouteOutcome(
            decisions=decisions, strategy=options.strategy, bundle_version=bundle_version,
            human_cost=float(budget.costs[result.human_mask].sum()), predicted=predicted, stage_seconds=stages,
        )

    async def _judge(self, instances, options: RouteOptions, timeout):
        return await self.judge.judge(
            instances, mode=options.judge_mode, template=options.judge_template,
            replay_judge=options.replay_judge, seed=options.seed, timeout=timeout,
        )

    def _scorer(self, strategy: str, timeout: float | None):
        if not strategies.needs_predictor(strategy):
            return None, ""
        from hybridpref.common.channels import call_metadata

        scorer = self.predictor.bound(timeout, call_metadata())
        info = scorer.info()
        if not info.loaded:
            raise NotReady(f"strategy {strategy!r} needs the predictor, which has no model bundle: {info.status_message}")
        return scorer, info.bundle_version

    def _predictions(self, scorer: PredictorClient, tagged: TaggedBatch, result, options: RouteOptions, decisions) -> dict[str, float]:
        """Explanations for every instance and the summary's predicted scores."""
        n = len(decisions)
        if options.explain_top_k:
            unique, inverse = np.unique(tagged.tag_matrix, axis=0, return_inverse=True)
            _, _, explanations = scorer.gains_explained(unique, None, n, options.explain_top_k)
            for d, row in zip(decisions, inverse.reshape(-1)):
                d.top_tags = explanations[row]
        predicted = strategies.predicted_baselines(scorer, tagged.tag_matrix, result.human_mask, seed=options.seed)
        if result.predicted_score is not None:
            predicted.setdefault("chosen", float(result.predicted_score))
        return {k: float(v) for k, v in predicted.items() if v is not None and math.isfinite(v)}

    def _count(self, decisions: list[Decision], strategy: str) -> None:
        humans = sum(d.human for d in decisions)
        self.metrics.routed.labels("HUMAN", strategy).inc(humans)
        self.metrics.routed.labels("LM", strategy).inc(len(decisions) - humans)


def _apply_judgements(decisions: list[Decision], rows: list[int], judged) -> None:
    for k, i in enumerate(rows):
        decisions[i].lm_label = Label(int(judged.labels[k]))
        decisions[i].lm_confidence = float(judged.confidence[k])
        decisions[i].judge_order_inconsistent = bool(judged.inconsistent[k])


def _supplied_costs(instances: Sequence[PreferenceInstance]) -> np.ndarray | None:
    """Per-instance human costs when every instance carries one, else None (formula applies)."""
    costs = [inst.human_cost for inst in instances]
    if all(c is not None for c in costs):
        return np.asarray(costs, dtype=np.float64)
    return None


def _cost_inputs(tagged: TaggedBatch) -> dict[str, np.ndarray]:
    col = {m: i for i, m in enumerate(LEXICAL_MEASURES)}
    expertise = budgets.expertise_levels_from_tags(tagged.tag_matrix)
    return {
        "prompt_tokens": tagged.measures[:, col["prompt_len"]],
        "response_tokens": tagged.measures[:, col["len_shorter"]] + tagged.measures[:, col["len_longer"]],
        "expertise_level": expertise,
    }


async def _in_thread(fn, /, *args, **kwargs):
    """CPU-bound strategy work off the event loop, keeping the request's log context."""
    ctx = contextvars.copy_context()
    return await asyncio.to_thread(functools.partial(ctx.run, fn, *args, **kwargs))
