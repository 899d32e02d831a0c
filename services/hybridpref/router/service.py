"""Routing orchestration: validate -> tag -> (judge) -> route -> judge LM-routed -> explain.

``RouterCore`` owns the request flow and the budget; it never computes features or
labels itself (tagger and judge do) and scores mixes through the predictor. The
strategies themselves are pure functions in ``hybridpref.router.strategies``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import structlog

from hybridpref.common.deadline import Deadline
from hybridpref.common.errors import FieldViolation, InvalidInput, NotReady
from hybridpref.common.executors import CoreExecutor
from hybridpref.common.instances import Label, PositionMode, PreferenceInstance, validate_instances
from hybridpref.common.metrics import Metrics
from hybridpref.common.settings import Settings
from hybridpref.common.vocabulary import LEXICAL_MEASURES
from hybridpref.router import budget as budgets
from hybridpref.router.limits import JudgeInfoCache, judge_violations
from hybridpref.router import strategies
from hybridpref.router.scoring import unique_rows
from hybridpref.router.downstream import JudgeClient, JudgedBatch, PredictorClient, TaggedBatch, TaggerClient
from hybridpref.router.store import MemoryStore, SpillStore

# Instances read back from the store per judge call batch (bounds memory for huge streams).
JUDGE_SLICE = 1024

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


@dataclass(slots=True)
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
        # CPU work (conversion, validation, strategies, spill-file I/O) runs here, off the event
        # loop, in a pool the server owns and bounds; a cancelled call's queued work never starts.
        self.executor = CoreExecutor("router", settings.router_workers)
        self.judge_info = JudgeInfoCache(self.judge.info)

    async def close(self) -> None:
        await self.tagger.close()
        await self.judge.close()
        self.predictor.close()
        self.executor.shutdown()

    def validate(self, instances: Sequence[PreferenceInstance], options: RouteOptions) -> None:
        """All input checks before any work: nothing is half-processed."""
        violations: list[FieldViolation] = []
        try:
            validate_instances(instances, self.settings.max_batch)
        except InvalidInput as exc:
            violations.extend(exc.violations)
        violations.extend(_option_violations(options, len(instances)))
        if violations:
            raise InvalidInput(violations)

    async def route(self, instances: Sequence[PreferenceInstance], options: RouteOptions, timeout: Deadline | float | None) -> RouteOutcome:
        """Route one in-memory batch (the unary RPC). ``timeout``: the call's ``Deadline`` (or seconds)."""
        clock, stages = Deadline.of(timeout), {"tag": 0.0}
        await self.executor.run(self.validate, instances, options, size=len(instances))
        await self._check_judge_names(instances, options, clock)
        with _timed(stages, "tag"):
            tagged = await self.tagger.tag(instances, clock)
        return await self._decide(MemoryStore(instances), tagged, options, clock, stages)

    async def route_stream(
        self, chunks: AsyncIterator[Sequence[PreferenceInstance]], options: RouteOptions, timeout: Deadline | float | None
    ) -> RouteOutcome:
        """Route a batch that arrives in chunks (the streaming RPC), any size.

        Each chunk is validated and tagged as it arrives; texts are spilled to a temporary
        file, so memory holds ids, costs and tag rows only. A bad chunk fails the whole
        call before any decision is made.
        """
        early = _option_violations(options, None)
        if early:
            raise InvalidInput(early)
        clock, stages = Deadline.of(timeout), {"tag": 0.0}
        store, parts, seen = SpillStore(), [], {}
        try:
            async for chunk in chunks:
                if len(store) + len(chunk) > self.settings.max_stream_instances:
                    raise InvalidInput(FieldViolation("instances", f"the stream exceeds the limit of {self.settings.max_stream_instances} instances"))
                await self.executor.run(_validate_chunk, chunk, len(store), seen, size=len(chunk))
                await self._check_judge_names(chunk, options, clock, offset=len(store))
                await self.executor.run(store.extend, chunk, size=len(chunk))
                with _timed(stages, "tag"):
                    parts.append(await self.tagger.tag(chunk, clock))
            violations = _option_violations(options, len(store))
            if violations:
                raise InvalidInput(violations)
            return await self._decide(store, TaggedBatch.concat(parts), options, clock, stages)
        finally:
            store.close()

    async def _check_judge_names(self, instances, options: RouteOptions, clock: Deadline, offset: int = 0) -> None:
        """Template and replay-judge names against what the judge advertises, before any work."""
        info = await self.judge_info.get(min(2.0, clock.timeout() or 2.0))
        violations = await self.executor.run(
            judge_violations, info, options.judge_template, options.replay_judge, instances, offset,
            needs_judge=options.strategy != "all_human", size=len(instances),
        )
        if violations:
            raise InvalidInput(violations)

    async def _decide(self, store, tagged: TaggedBatch, options: RouteOptions, clock: Deadline, stages: dict[str, float]) -> RouteOutcome:
        """Everything after tagging: (judge) -> budget -> strategy -> judge LM-routed -> explain."""
        n = len(store)
        judged = None
        if strategies.needs_judge_first(options.strategy):
            with _timed(stages, "judge"):
                judged = await self._judge_rows(store, list(range(n)), options, clock)
        budget = budgets.resolve_budget(
            options.budget_kind, options.budget_value, n, _supplied_costs(store.human_costs), **_cost_inputs(tagged)
        )
        # The predictor client is blocking: never call it on the event loop (it may serve the predictor too).
        scorer, bundle_version = await self.executor.run(self._scorer, options.strategy, clock, tagged.reference_bins_id)
        with _timed(stages, "route"):
            result = await self.executor.run(
                strategies.route, options.strategy, tagged.tag_matrix, budget, scorer=scorer, seed=options.seed,
                judge_confidence=None if judged is None else judged.confidence,
                judge_inconsistent=None if judged is None else judged.inconsistent,
                simulated_candidates=options.simulated_candidates or 500, deadline=clock, size=n,
            )
        decisions = await self.executor.run(_decisions, store.ids, result, budget, size=n)
        if judged is None:
            lm_rows = [i for i, d in enumerate(decisions) if not d.human]
            if lm_rows:
                with _timed(stages, "judge"):
                    _apply_judgements(decisions, lm_rows, await self._judge_rows(store, lm_rows, options, clock))
        else:
            _apply_judgements(decisions, list(range(n)), judged)
        predicted: dict[str, float] = {}
        if scorer is not None:
            with _timed(stages, "predict"):
                predicted = await self.executor.run(self._predictions, scorer, tagged, result, options, decisions, size=n)
        self._count(decisions, options.strategy)
        return RouteOutcome(
            decisions=decisions, strategy=options.strategy, bundle_version=bundle_version,
            human_cost=float(budget.costs[result.human_mask].sum()), predicted=predicted, stage_seconds=stages,
        )

    async def _judge_rows(self, store, rows: list[int], options: RouteOptions, clock: Deadline) -> JudgedBatch:
        """Judge ``rows`` of the store, reading instances back one slice at a time (off the loop)."""
        parts = []
        for start in range(0, len(rows), JUDGE_SLICE):
            instances = await self.executor.run(store.get, rows[start : start + JUDGE_SLICE], size=JUDGE_SLICE)
            parts.append(await self._judge(instances, options, clock))
        return JudgedBatch.concat(parts)

    async def _judge(self, instances, options: RouteOptions, timeout):
        return await self.judge.judge(
            instances, mode=options.judge_mode, template=options.judge_template,
            replay_judge=options.replay_judge, seed=options.seed, timeout=timeout,
        )

    def _scorer(self, strategy: str, timeout: Deadline | float | None, reference_bins_id: str = ""):
        if not strategies.needs_predictor(strategy):
            return None, ""
        from hybridpref.common.channels import call_metadata

        scorer = self.predictor.bound(timeout, call_metadata())
        info = scorer.info()
        if not info.loaded:
            raise NotReady(f"strategy {strategy!r} needs the predictor, which has no model bundle: {info.status_message}")
        if reference_bins_id and info.reference_bins_id and reference_bins_id != info.reference_bins_id:
            # Tags binned with other edges than the PPM was trained on would be silently wrong.
            raise NotReady(
                f"the tagger bins with reference edges {reference_bins_id}, the predictor bundle "
                f"{info.bundle_version} was built with {info.reference_bins_id}: deploy matching tagger and bundle"
            )
        return scorer, info.bundle_version

    def _predictions(self, scorer: PredictorClient, tagged: TaggedBatch, result, options: RouteOptions, decisions) -> dict[str, float]:
        """Explanations for every instance and the summary's predicted scores."""
        n = len(decisions)
        if options.explain_top_k:
            unique, inverse = unique_rows(tagged.tag_matrix)
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


def _decisions(ids: Sequence[str], result, budget) -> list[Decision]:
    return [Decision(id=i, human=bool(h), gain=float(g), human_cost=float(c))
            for i, h, g, c in zip(ids, result.human_mask, result.gains, budget.costs)]


def _apply_judgements(decisions: list[Decision], rows: list[int], judged) -> None:
    for k, i in enumerate(rows):
        decisions[i].lm_label = Label(int(judged.labels[k]))
        decisions[i].lm_confidence = float(judged.confidence[k])
        decisions[i].judge_order_inconsistent = bool(judged.inconsistent[k])


def _supplied_costs(costs: Sequence[float | None]) -> np.ndarray | None:
    """Per-instance human costs as given; NaN where missing (the budget's formula fills those)."""
    if all(c is None for c in costs):
        return None
    return np.array([np.nan if c is None else c for c in costs], dtype=np.float64)


def _option_violations(options: RouteOptions, n: int | None) -> list[FieldViolation]:
    """Strategy and budget checks; the budget's range needs the batch size ``n`` (None: not known yet)."""
    violations: list[FieldViolation] = []
    if options.strategy not in strategies.STRATEGIES:
        violations.append(FieldViolation(
            "config.strategy", f"unknown strategy {options.strategy!r}; expected one of {sorted(strategies.STRATEGIES)}"
        ))
    if n == 0:
        violations.append(FieldViolation("instances", "empty batch"))
    if n is None and options.budget_kind == "count":
        return violations  # a count is checked against the batch size once the stream has ended
    size = 1 if n is None else n  # fraction, cost and auto ranges do not depend on the size
    try:  # shape and range; the real costs come after tagging
        budgets.resolve_budget(options.budget_kind, options.budget_value, size, np.ones(size))
    except InvalidInput as exc:
        violations.extend(exc.violations)
    return violations


def _validate_chunk(chunk: Sequence[PreferenceInstance], offset: int, seen: dict[str, int]) -> None:
    """Validate one streamed chunk with batch-wide indices and ids unique across chunks."""
    violations: list[FieldViolation] = []
    try:
        validate_instances(chunk)
    except InvalidInput as exc:
        for v in exc.violations:
            field = re.sub(r"^instances\[(\d+)\]", lambda m: f"instances[{int(m.group(1)) + offset}]", v.field)
            violations.append(FieldViolation(field, v.description))
    for k, inst in enumerate(chunk):
        if inst.id in seen and seen[inst.id] < offset:
            violations.append(FieldViolation(f"instances[{k + offset}].id", f"duplicate id {inst.id!r} (first at instances[{seen[inst.id]}])"))
        seen.setdefault(inst.id, k + offset)
    if violations:
        raise InvalidInput(violations)


@contextmanager
def _timed(stages: dict[str, float], name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start


def _cost_inputs(tagged: TaggedBatch) -> dict[str, np.ndarray]:
    col = {m: i for i, m in enumerate(LEXICAL_MEASURES)}
    expertise = budgets.expertise_levels_from_tags(tagged.tag_matrix)
    return {
        "prompt_tokens": tagged.measures[:, col["prompt_len"]],
        "response_tokens": tagged.measures[:, col["len_shorter"]] + tagged.measures[:, col["len_longer"]],
        "expertise_level": expertise,
    }

