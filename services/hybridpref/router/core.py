"""Routing orchestration: validate -> text features -> (tag) -> (judge) -> route -> judge LM-routed -> explain + summary.

The tagger runs only when the decision reads its output (:func:`tagging_reason`): a strategy that routes on the
PPM, ``hybrid`` on a batch inside the PPM's domain (checked first on text features, which need no tagger), a cost
budget whose costs the formula must fill (expertise tags), or a correction model that reads tags. The default
path (``hybrid`` with the panel correction model, out of the PPM's domain) never tags (docs/EVALUATION.md).

``RouterCore`` owns the request flow and the budget; it never computes tags or labels itself:
its tagger, judge and routing-model source are injected (``hybridpref.router.backends``
protocols; gRPC clients in the service, in-process cores in tests and benchmarks), so this
module imports no gRPC. Every strategy runs here, in process, on the routing model the
predictor serves once per bundle version (``RoutingModelSource``); the strategies are pure
functions in ``hybridpref.router.strategies``, the summary in ``hybridpref.router.summary``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from hybridpref.common.signals import JudgeSignals
from hybridpref.common.vocabulary import LEXICAL_MEASURES, TAG_NAMES
from hybridpref.router import budget as budgets
from hybridpref.router import strategies
from hybridpref.router.adaptation import CampaignModels
from hybridpref.router.backends import (
    JudgeBackend,
    JudgedBatch,
    RouterTags,
    RoutingModelSource,
    TaggerBackend,
    judge_signals,
)
from hybridpref.router.budget import Budget, ResolvedBudget
from hybridpref.router.campaign import CAMPAIGN_SLICE, CampaignRoute, JudgeRows, StoreProvider, candidates
from hybridpref.router.explain import rank_descending, reason, top_correction_features, top_tags
from hybridpref.router.limits import MAX_LISTED, judge_violations
from hybridpref.router.model import RoutingModel
from hybridpref.router.progress import report as report_progress
from hybridpref.router.recorded import replay_batch
from hybridpref.router.rejects import MAX_LISTED as MAX_REJECTS_LISTED
from hybridpref.router.rejects import Rejected, by_instance, rejected_of
from hybridpref.router.spill import InstanceStore, MemoryStore, SpillStore
from hybridpref.router.strategies import StrategySpec
from hybridpref.router.summary import (
    DomainResult,
    Summary,
    column_totals,
    domain_check,
    judge_warnings,
    summarize,
    unsure_mask,
    warning_kind,
)
from hybridpref.router.yielding import Yielder
from hybridpref.server.deadline import Deadline
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.metrics import Metrics
from hybridpref.server.settings import Settings
from hybridpref.store.api import CampaignStore, StoredDecision
from hybridpref_client.core.errors import BackendUnavailable, FieldViolation, InvalidInput, NotReady
from hybridpref_client.core.instances import (
    NUL_TEXT,
    Label,
    PositionMode,
    PreferenceInstance,
    fields_with_nul,
    validate_instances,
)

# Instances read back from the store per judge call batch (bounds memory for huge streams).
JUDGE_SLICE = 1024
# A stream's unit of work between two yields to interactive calls (a tag call's worth).
BULK_SLICE = 64

log = structlog.get_logger()


@dataclass
class RouteOptions:
    """Request-level routing options (the core mirror of ``RouteConfig``): the budget as stated (checked
    against the batch size here), the strategy resolved (the servicer applies the default). With a
    ``campaign`` the budget is ``None`` (the campaign's total governs) and the strategy is the campaign's."""

    budget: Budget | None
    strategy: StrategySpec
    seed: int = 0
    judge_mode: PositionMode = PositionMode.UNSPECIFIED
    judge_template: str = ""
    replay_judge: str = ""
    explain_top_k: int = 3
    simulated_candidates: int = 500
    skip_invalid: bool = False  # leave invalid instances out (listed in the outcome) instead of refusing
    campaign: CampaignRoute | None = None


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
    expected_gain: float | None = None
    reason: str = ""  # one line: why it went where it went (``hybridpref.router.explain.reason``)
    replayed: bool = False  # campaign: the id was already stored; this is its stored decision
    exploration: bool = False  # campaign: routed to humans by the exploration share


@dataclass(frozen=True)
class CampaignProgress:
    """Where a campaign stands after a routed batch: its budget spent and left, and how many of the batch's
    instances were already stored (replayed)."""

    name: str
    batch: str
    budget_spent: float
    budget_left: float
    replayed: int
    # labels the batch's new human-routed pairs are expected to change (what the campaign's realised corrections
    # count), recalibrated on its returned labels (hybridpref.router.adaptation); None without a panel model
    expected_changes: Any = None  # hybridpref.routing_model.online.Interval
    model: dict[str, Any] | None = None  # the campaign's correction model (CampaignModel.describe())


@dataclass
class RouteOutcome:
    decisions: list[Decision]
    strategy: str
    bundle_version: str
    human_cost: float
    summary: Summary
    stage_seconds: dict[str, float]
    rejected: list[Rejected] = field(default_factory=list)  # with ``skip_invalid``: what was left out, and why
    rejected_count: int = 0  # instances left out
    campaign: CampaignProgress | None = None


@dataclass
class Incoming:
    """A batch, or one chunk of a stream, as the servicer hands it to the core: the instances, their
    indices in the caller's whole batch or stream (``None``: consecutive from the chunk's start), and
    those already left out at conversion (``skip_invalid``)."""

    instances: Sequence[PreferenceInstance]
    origin: Sequence[int] | None = None
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class JudgeFirst:
    """Everything the judge-first pass produced, rows in batch order (strategies that need judge signals)."""

    batch: JudgedBatch
    signals: JudgeSignals
    p_wrong: tuple[np.ndarray, np.ndarray] | None  # (P(LM wrong), P(human wrong)) from the correction model
    # The correction-model features that moved P(LM wrong) most, per row: (feature idx (n, k), value (n, k)).
    explained: tuple[np.ndarray, np.ndarray] | None = None
    features: np.ndarray | None = None  # (n, F) correction features (kept for a campaign's stored decisions)
    feature_names: tuple[str, ...] = ()  # their columns: PANEL_FEATURES or the ONNX model's FEATURE_NAMES

    def rows(self) -> JudgeRows:
        """The pass as the campaign's candidates read it."""
        s = self.signals
        return JudgeRows(
            self.batch.labels,
            self.batch.confidence,
            np.asarray(s.order_flip, bool),
            np.asarray(self.batch.p_a_better, np.float64),
            np.asarray(s.agreement, np.float64),
            self.expected_gain,
            None if self.p_wrong is None else self.p_wrong[0],
            self.features,
            self.feature_names,
            self.batch.judge_id,
        )

    def no_verdict(self) -> np.ndarray:
        """(n,) bool: the judge gave no verdict (a tie, no label or an order flip)."""
        out: np.ndarray = np.asarray(self.signals.label) == 0
        return out

    @property
    def expected_gain(self) -> np.ndarray | None:
        return None if self.p_wrong is None else self.p_wrong[0] - self.p_wrong[1]


class RouterCore:
    def __init__(
        self,
        settings: Settings,
        tagger: TaggerBackend,
        judge: JudgeBackend,
        models: RoutingModelSource,
        metrics: Metrics | None = None,
        campaigns: StoreProvider | None = None,
    ):
        self.settings = settings
        self.metrics = metrics or Metrics.default()
        self.tagger = tagger
        self.judge = judge
        self.models = models
        # The campaign store, opened on the first campaign call (settings.router.db_url).
        self.campaigns = campaigns or StoreProvider(settings.router.db_url)
        # Each campaign's correction model, adapted to its returned labels (cached; refit every few labels).
        self.adaptation = CampaignModels(self.campaigns.get)
        # CPU work (conversion, validation, strategies, spill-file I/O) runs here, off the event
        # loop, in a pool the server owns and bounds; a cancelled call's queued work never starts.
        self.executor = CoreExecutor("router", settings.router.workers)
        # Streams pause their slices while small unary calls are in flight (hybridpref.router.yielding).
        self.yielder = Yielder()

    async def close(self) -> None:
        """Stop the worker pool and close the campaign store (the backends belong to whoever built them)."""
        self.executor.shutdown()
        self.adaptation.close()
        self.campaigns.close()

    async def route(
        self, instances: Sequence[PreferenceInstance] | Incoming, options: RouteOptions, deadline: Deadline
    ) -> RouteOutcome:
        """Route one in-memory batch (the unary RPC) within the call's ``deadline``."""
        incoming = instances if isinstance(instances, Incoming) else Incoming(instances)
        with self.yielder.interactive(len(incoming.instances)):
            stages = {"tag": 0.0}
            instances, rejected = await self._admit(incoming, options, deadline, {}, max_batch=self.settings.limits.max_batch)
            violations = _option_violations(options, len(instances))
            if violations:
                raise InvalidInput(violations)
            warnings: list[str] = []
            model = await self._model(options, deadline, warnings)
            text = await self.executor.run(BatchText.of, instances, size=len(instances))
            store = MemoryStore(instances)
            tagged = None
            reason: str = await self.executor.run(tagging_reason, options, model, text, store.human_costs, size=len(instances))
            if reason:
                with _timed(stages, "tag"):
                    tagged = await self.tagger.tag(instances, deadline)
            outcome = await self._decide(store, tagged, text, model, warnings, options, deadline, stages)
            return self._with_rejected(outcome, rejected)

    async def route_stream(
        self, chunks: AsyncIterator[Sequence[PreferenceInstance] | Incoming], options: RouteOptions, deadline: Deadline
    ) -> RouteOutcome:
        """Route a batch that arrives in chunks (the streaming RPC), any size.

        Each chunk is validated as it arrives, its text features computed and, when the strategy surely reads
        tags (a PPM strategy), tagged; texts are spilled to a temporary file, so memory holds ids, costs, text
        features and tag rows only. Whether the others need tags (``hybrid`` inside the PPM's domain, a cost
        formula) is known once the whole batch is in: then the spilled instances are tagged slice by slice.
        A bad chunk fails the whole call before any decision is made (with ``skip_invalid``: its bad instances
        are left out).
        """
        stages: dict[str, float] = {"tag": 0.0}
        store = SpillStore()
        parts: list[RouterTags] = []
        texts: list[BatchText] = []
        seen: dict[str, int] = {}
        rejected: list[Rejected] = []
        received = tagged_so_far = 0
        try:
            warnings: list[str] = []
            model: RoutingModel | None = None
            eager: bool | None = None  # decided with the routing model, fetched once the first instances arrive
            async for item in chunks:
                incoming = item if isinstance(item, Incoming) else Incoming(item, range(received, received + len(item)))
                received += len(incoming.instances) + len({r.index for r in incoming.rejected})
                if received > self.settings.limits.max_stream_instances:
                    raise InvalidInput(
                        FieldViolation(
                            "instances", f"the stream exceeds the limit of {self.settings.limits.max_stream_instances} instances"
                        )
                    )
                await self.yielder.pause()
                chunk, dropped = await self._admit(incoming, options, deadline, seen)
                rejected.extend(dropped)
                if not chunk:
                    continue
                await self.executor.run(store.extend, chunk, size=len(chunk))
                if eager is None:
                    model = await self._model(options, deadline, warnings)
                    eager = (
                        options.strategy.predictor in ("required", "optional") and model is not None and model.scorer is not None
                    )
                if eager:
                    # A stream is bulk work: it is tagged one slice at a time, each after the small calls in flight.
                    for start in range(0, len(chunk), BULK_SLICE):
                        piece = chunk[start : start + BULK_SLICE]
                        await self.yielder.pause()
                        with _timed(stages, "tag"):
                            parts.append(await self.tagger.tag(piece, deadline))
                        tagged_so_far += len(piece)
                        report_progress("tagged", tagged_so_far, 0)  # the stream's size is not known yet
                texts.append(await self.executor.run(BatchText.of, chunk, size=len(chunk)))
            violations = _option_violations(options, len(store))
            if violations:
                raise InvalidInput(violations)
            if eager is None:  # no instance arrived (every one left out): the model is still needed to route
                model = await self._model(options, deadline, warnings)
                eager = False
            text = BatchText.concat(texts)
            tagged = RouterTags.concat(parts) if eager else None
            if eager:
                report_progress("tagged", tagged_so_far, tagged_so_far)
            reason: str = (
                "" if eager else await self.executor.run(tagging_reason, options, model, text, store.human_costs, size=len(store))
            )
            if reason:
                with _timed(stages, "tag"):
                    tagged = await self._tag_store(store, deadline)
            outcome = await self._decide(store, tagged, text, model, warnings, options, deadline, stages, bulk=True)
            return self._with_rejected(outcome, rejected)
        finally:
            store.close()

    async def _tag_store(self, store: InstanceStore, deadline: Deadline) -> RouterTags:
        """Tag every spilled instance, one slice at a time (the batch turned out to need tags)."""
        parts: list[RouterTags] = []
        for start in range(0, len(store), BULK_SLICE):  # bulk work: one small slice at a time, after small calls
            rows = list(range(start, min(len(store), start + BULK_SLICE)))
            await self.yielder.pause()
            parts.append(await self.tagger.tag(await self.executor.run(store.get, rows, size=len(rows)), deadline))
            report_progress("tagged", rows[-1] + 1, len(store))
        return RouterTags.concat(parts)

    async def _admit(
        self, incoming: Incoming, options: RouteOptions, deadline: Deadline, seen: dict[str, int], max_batch: int | None = None
    ) -> tuple[list[PreferenceInstance], list[Rejected]]:
        """Validate a batch or chunk before any work: (the instances to route, those left out).

        Without ``skip_invalid`` any violation refuses the call; with it, an instance with a violation is
        left out (a violation of anything but an instance still refuses). ``seen``: ids of the stream's
        earlier chunks (duplicates across chunks)."""
        instances = list(incoming.instances)
        origin = list(incoming.origin) if incoming.origin is not None else list(range(len(instances)))
        violations = await self.executor.run(_instance_violations, instances, origin, seen, max_batch, size=len(instances))
        if not options.skip_invalid:
            if violations:
                raise InvalidInput(violations)
            await self._check_judge_names(instances, options, deadline, origin)
            return instances, list(incoming.rejected)
        per, other = by_instance(violations)
        if other:
            raise InvalidInput(other)
        judge = await self._judge_name_violations(instances, options, deadline, origin, max_listed=None)
        more, other = by_instance(judge)
        if other:
            raise InvalidInput(other)
        for index, found in more.items():
            per.setdefault(index, []).extend(found)
        ids = {o: inst.id for o, inst in zip(origin, instances)}
        kept = [inst for o, inst in zip(origin, instances) if o not in per]
        return kept, [*incoming.rejected, *rejected_of(per, ids)]

    async def _check_judge_names(
        self, instances: Sequence[PreferenceInstance], options: RouteOptions, deadline: Deadline, origin: Sequence[int]
    ) -> None:
        """Template and replay-judge names, before any work: the template against what the judge
        advertises, a replay judge against the instances' recorded labels."""
        violations = await self._judge_name_violations(instances, options, deadline, origin)
        if violations:
            raise InvalidInput(violations)

    async def _judge_name_violations(
        self,
        instances: Sequence[PreferenceInstance],
        options: RouteOptions,
        deadline: Deadline,
        origin: Sequence[int],
        max_listed: int | None = MAX_LISTED,
    ) -> list[FieldViolation]:
        """``instances[i]`` counted in the caller's batch (``origin[k]`` for the k-th of ``instances``)."""
        needs_info = not options.replay_judge and options.strategy.needs_judge
        info = await self.judge.judge_info(min(2.0, deadline.timeout() or 2.0)) if needs_info else None
        violations = await self.executor.run(
            judge_violations,
            info,
            options.judge_template,
            options.replay_judge,
            instances,
            0,
            needs_judge=options.strategy.needs_judge,
            max_listed=max_listed,
            size=len(instances),
        )
        return [_at_origin(v, origin) for v in violations]

    async def _decide(
        self,
        store: InstanceStore,
        tagged: RouterTags | None,
        text: BatchText,
        model: RoutingModel | None,
        warnings: list[str],
        options: RouteOptions,
        deadline: Deadline,
        stages: dict[str, float],
        bulk: bool = False,
    ) -> RouteOutcome:
        """Everything after tagging: (judge) -> budget -> strategy -> judge LM-routed -> explain. ``tagged``: None
        when the decision reads no tags (:func:`tagging_reason`); ``text``: the batch's text features (the domain
        check and both correction models read them); ``bulk``: a stream's work, which yields to small calls."""
        if options.campaign is not None:
            return await self._decide_campaign(store, tagged, text, model, warnings, options, deadline, stages)
        n = len(store)
        strategy = options.strategy
        if tagged is not None:
            _check_bins(model, tagged)
        judged = None
        if strategy.needs_judge_first:
            with _timed(stages, "judge"):
                judged = await self._judge_first(store, tagged, text, model, options, deadline, bulk=bulk)
        assert options.budget is not None  # checked with the options
        supplied = _supplied_costs(store.human_costs)
        budget = budgets.resolve_budget(options.budget, n, supplied, **_cost_inputs(tagged, text))
        if tagged is None and (supplied is None or np.isnan(supplied).any()):
            warnings.append(
                "human costs not given were estimated from word counts (about 1.3 tokens per word) without "
                "the tagger's expertise level: the strategy read no tags, so the tagger was not run"
            )
        tag_matrix = np.zeros((n, 0), np.uint8) if tagged is None else tagged.tag_matrix
        with _timed(stages, "route"):
            result, summary = await self.executor.run(
                decide,
                model,
                strategy,
                tag_matrix,
                budget,
                judged,
                text.features,
                seed=options.seed,
                simulated_candidates=options.simulated_candidates or 500,
                deadline=deadline,
                size=n,
            )
        summary.warnings[:0] = warnings
        decisions = await self.executor.run(_decisions, store.ids, result, budget, size=n)
        judged_rows = list(range(n))
        if judged is None:
            judged_rows = [i for i, d in enumerate(decisions) if not d.human]
            if judged_rows:
                with _timed(stages, "judge"):
                    judged = await self._judge_rows(store, judged_rows, tagged, text, model, options, deadline, bulk=bulk)
                # Strategy-independent: what the judge said about the rows it labelled.
                summary.warnings.extend(judge_warnings(judged.signals, of=f"the {len(judged_rows)} LM-routed pairs"))
        if judged is not None:
            _apply_judgements(decisions, judged_rows, judged.batch)
            if judged.expected_gain is not None:
                for i, g in zip(judged_rows, judged.expected_gain):
                    decisions[i].expected_gain = float(g)
        if options.explain_top_k:
            with _timed(stages, "explain"):
                await self.executor.run(
                    _explain_all, model, strategy, tag_matrix, result, judged, judged_rows, options, decisions, size=n
                )
        self._count(decisions, strategy.name)
        self._count_quality(judged, summary)
        return RouteOutcome(
            decisions=decisions,
            strategy=strategy.name,
            bundle_version="" if model is None else model.bundle_version,
            human_cost=float(budget.costs[result.human_mask].sum()),
            summary=summary,
            stage_seconds=stages,
        )

    async def _decide_campaign(
        self,
        store: InstanceStore,
        tagged: RouterTags | None,
        text: BatchText,
        model: RoutingModel | None,
        warnings: list[str],
        options: RouteOptions,
        deadline: Deadline,
        stages: dict[str, float],
    ) -> RouteOutcome:
        """Everything after tagging, for a campaign: the campaign's correction model (adapted to its returned
        labels, :mod:`hybridpref.router.adaptation`) -> judge every row -> the strategy's scores -> the campaign
        store decides and stores each slice (its spending policy, its budget, the version of the model that
        scored it) -> explain + summary (with the campaign's recalibrated expected label changes)."""
        campaign = options.campaign
        assert campaign is not None
        n = len(store)
        strategy = options.strategy
        if tagged is not None:
            _check_bins(model, tagged)
        adapted = None
        if model is not None and model.panel is not None:
            with _timed(stages, "adapt"):  # cached per campaign: a refit only every REFIT_EVERY new votes
                adapted = await self.executor.run(self.adaptation.model_for, campaign.vendor, campaign.name, model)
            model = model.with_panel(adapted.panel)
        with _timed(stages, "judge"):
            judged = await self._judge_first(store, tagged, text, model, options, deadline, keep_features=True)
        budget = budgets.resolve_budget(Budget.auto(), n, _supplied_costs(store.human_costs), **_cost_inputs(tagged, text))
        if campaign.budget_kind == "cost":  # scores per unit of human cost
            budget = ResolvedBudget("cost", None, float("inf"), budget.costs)
        tag_matrix = np.zeros((n, 0), np.uint8) if tagged is None else tagged.tag_matrix
        with _timed(stages, "route"):
            scores, domain = await self.executor.run(
                campaign_scores, model, strategy, tag_matrix, budget, judged, text.features, seed=options.seed, size=n
            )
        rows_judged = judged.rows()
        bundle = "" if model is None else model.bundle_version
        # The model whose P(LM wrong) scored the batch (the store records it per decision; a refit reads it back).
        version = model.correction_name()[1] if model is not None and judged.p_wrong is not None else ""
        stored: list[StoredDecision] = []
        db = await self.executor.run(self.campaigns.get)
        with _timed(stages, "store"):
            for start in range(0, n, CAMPAIGN_SLICE):
                rows = list(range(start, min(n, start + CAMPAIGN_SLICE)))
                instances = await self.executor.run(store.get, rows, size=len(rows))
                batch = await self.executor.run(candidates, instances, rows, scores, budget.costs, rows_judged, size=len(rows))
                stored += await self.executor.run(
                    db.decide_batch, campaign.vendor, campaign.name, campaign.batch, batch, version, bundle, size=len(rows)
                )
                report_progress("stored", len(stored), n)
            spent, total = await self.executor.run(_campaign_budget, db, campaign.vendor, campaign.name)
        decisions = await self.executor.run(_campaign_decisions, stored, budget.costs, judged, size=n)
        mask = np.fromiter((d.human for d in decisions), dtype=bool, count=n)
        with _timed(stages, "summary"):
            summary = await self.executor.run(
                summarize,
                model,
                tag_matrix,
                mask,
                domain=domain,
                totals=column_totals(tag_matrix),
                p_wrong=judged.p_wrong,
                signals=judged.signals,
                size=n,
            )
        if version:
            summary.correction_model, summary.correction_version = model.correction_name()  # type: ignore[union-attr]
        summary.warnings[:0] = warnings
        changes = None
        if adapted is not None and judged.p_wrong is not None:
            fresh = mask & ~np.fromiter((d.replayed for d in decisions), dtype=bool, count=n)
            changes = adapted.expected_changes(judged.p_wrong[0][fresh], judged.no_verdict()[fresh])
            summary.warnings.append(adapted.interval_note(judged.no_verdict()[fresh]))
        if options.explain_top_k:
            result = strategies.RoutingResult(mask, np.array([d.gain for d in decisions]), strategy.name, None)
            with _timed(stages, "explain"):
                await self.executor.run(
                    _explain_all, model, strategy, tag_matrix, result, judged, list(range(n)), options, decisions, size=n
                )
        self._count(decisions, strategy.name)
        self._count_campaign(campaign, decisions)
        progress = CampaignProgress(
            campaign.name,
            campaign.batch,
            spent,
            max(0.0, total - spent),
            sum(d.replayed for d in decisions),
            changes,
            adapted.describe() if adapted is not None else None,
        )
        return RouteOutcome(
            decisions=decisions,
            strategy=strategy.name,
            bundle_version=bundle,
            human_cost=float(sum(d.human_cost for d in decisions if d.human)),
            summary=summary,
            stage_seconds=stages,
            campaign=progress,
        )

    def _count_campaign(self, campaign: CampaignRoute, decisions: list[Decision]) -> None:
        """Decisions stored (per vendor and route) and the budget units they reserved; replays are not counted."""
        fresh = [d for d in decisions if not d.replayed]
        humans = [d for d in fresh if d.human]
        stored = self.metrics.campaign_decisions
        stored.labels(campaign.vendor, "HUMAN").inc(len(humans))
        stored.labels(campaign.vendor, "LM").inc(len(fresh) - len(humans))
        units = len(humans) if campaign.budget_kind == "count" else sum(d.human_cost for d in humans)
        self.metrics.campaign_budget_spent.labels(campaign.vendor, campaign.budget_kind).inc(units)

    async def _model(self, options: RouteOptions, deadline: Deadline, warnings: list[str]) -> RoutingModel | None:
        """The routing model. A strategy that needs the PPM (or a correction model) fails without it
        (``NotReady``) before any tagging or judging; the others route anyway and the summary says what is
        missing. The tagger's bins are checked against the bundle's once tags exist (:func:`_check_bins`)."""
        strategy = options.strategy
        needed = strategy.needs_predictor or strategy.needs_expected_gain
        try:
            model = await self.models.routing_model(deadline)
            if strategy.needs_predictor and model.scorer is None:
                raise NotReady(f"strategy {strategy.name!r} needs a quadratic PPM; bundle {model.bundle_version} has none")
            if strategy.needs_expected_gain and not model.has_correction:
                raise NotReady(
                    f"strategy {strategy.name!r} needs the expected-correction model; bundle {model.bundle_version} "
                    "has none: load a bundle built with one, or choose another strategy"
                )
            return model
        except (NotReady, BackendUnavailable) as exc:
            if needed:
                raise
            warnings.append(f"no routing model ({exc}): no predictions, domain check or expected corrections")
            return None

    async def _judge_first(
        self,
        store: InstanceStore,
        tagged: RouterTags | None,
        text: BatchText,
        model: RoutingModel | None,
        options: RouteOptions,
        deadline: Deadline,
        keep_features: bool = False,
        bulk: bool = False,
    ) -> JudgeFirst:
        """Judge every row (see ``_judge_rows``)."""
        return await self._judge_rows(store, list(range(len(store))), tagged, text, model, options, deadline, keep_features, bulk)

    async def _judge_rows(
        self,
        store: InstanceStore,
        rows: list[int],
        tagged: RouterTags | None,
        text: BatchText,
        model: RoutingModel | None,
        options: RouteOptions,
        deadline: Deadline,
        keep_features: bool = False,
        bulk: bool = False,
    ) -> JudgeFirst:
        """Judge ``rows`` of the store, one slice at a time (instances read back off the loop): the
        judgements, their signals and, with a correction model, P(wrong) and what drove it per row
        (all in the order of ``rows``); ``keep_features``: the correction features too (a campaign stores
        them, with or without a correction model)."""
        features: list[np.ndarray] = []
        names: tuple[str, ...] = ()
        batches: list[JudgedBatch] = []
        signals: list[JudgeSignals] = []
        p_lm: list[np.ndarray] = []
        p_h: list[np.ndarray] = []
        idx: list[np.ndarray] = []
        val: list[np.ndarray] = []
        step = BULK_SLICE if bulk else JUDGE_SLICE  # a stream's judging yields to small calls between slices
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            if bulk:
                await self.yielder.pause()
            instances = await self.executor.run(store.get, part, size=len(part))
            judged = await self._judge(instances, options, deadline)
            sig = judge_signals(judged, instances)
            batches.append(judged)
            signals.append(sig)
            x = None
            if keep_features or (model is not None and model.has_correction):
                names, x = await self.executor.run(_model_features, model, instances, tagged, text, part, sig, size=len(part))
                if keep_features:
                    features.append(x)
            if model is not None and model.has_correction:
                lm, hu, i, v = await self.executor.run(_p_wrong, model, x, options.explain_top_k, size=len(part))
                p_lm.append(lm)
                p_h.append(hu)
                idx.append(i)
                val.append(v)
            report_progress("judged", start + len(part), len(rows))
        p_wrong = (np.concatenate(p_lm), np.concatenate(p_h)) if p_lm else None
        explained = (np.concatenate(idx), np.concatenate(val)) if idx else None
        kept = np.concatenate(features) if features else None
        return JudgeFirst(JudgedBatch.concat(batches), _concat_signals(signals), p_wrong, explained, kept, names)

    async def _judge(self, instances: Sequence[PreferenceInstance], options: RouteOptions, deadline: Deadline) -> JudgedBatch:
        if options.replay_judge:  # the vendor's recorded labels, whatever the judge service runs
            return await self.executor.run(
                replay_batch, instances, options.replay_judge, options.judge_mode, options.seed, size=len(instances)
            )
        return await self.judge.judge(
            instances,
            mode=options.judge_mode,
            template=options.judge_template,
            replay_judge=options.replay_judge,
            seed=options.seed,
            deadline=deadline,
        )

    def _with_rejected(self, outcome: RouteOutcome, rejected: list[Rejected]) -> RouteOutcome:
        if rejected:
            self.metrics.routing_warnings.labels("instances_left_out").inc()
        return _with_rejected(outcome, rejected)

    def _count_quality(self, judged: JudgeFirst | None, summary: Summary) -> None:
        """Routing-quality counters an operator can alert on: the judge's unsure labels, batches out of
        the bundle's domain, summary warnings by kind (the human share is ``hybridpref_routed_instances``)."""
        if judged is not None and len(judged.signals):
            unsure = int(np.count_nonzero(unsure_mask(judged.signals)))
            self.metrics.judge_labels.labels("true").inc(unsure)
            self.metrics.judge_labels.labels("false").inc(len(judged.signals) - unsure)
        domain = "unknown" if summary.domain is None else ("in" if summary.domain.in_domain else "out")
        self.metrics.routed_batches.labels(domain).inc()
        for text in summary.warnings:
            self.metrics.routing_warnings.labels(warning_kind(text)).inc()

    def _count(self, decisions: list[Decision], strategy: str) -> None:
        humans = sum(d.human for d in decisions)
        self.metrics.routed.labels("HUMAN", strategy).inc(humans)
        self.metrics.routed.labels("LM", strategy).inc(len(decisions) - humans)


def decide(
    model: RoutingModel | None,
    strategy: StrategySpec,
    tag_matrix: np.ndarray,
    budget: ResolvedBudget,
    judged: JudgeFirst | None,
    features: np.ndarray | None,
    *,
    seed: int,
    simulated_candidates: int = 500,
    deadline: Deadline | None = None,
) -> tuple[strategies.RoutingResult, Summary]:
    """The routing decision and its summary, in process: what the service runs after tagging and the
    judge-first pass, and what ``benchmarks/bench_router_scale.py`` times. ``features``: the batch's (n, F)
    correction features, for the domain check."""
    totals = column_totals(tag_matrix)
    domain = domain_check(model, features)
    # A bundle without domain statistics cannot show its PPM applies here: treated as out of domain.
    ppm_in_domain = domain is not None and domain.in_domain
    # Without tag columns (the batch was not tagged: nothing here reads the PPM) no scorer is handed over.
    scorer = None if model is None or tag_matrix.shape[1] == 0 else model.scorer
    result = strategies.route(
        strategy.name,
        tag_matrix,
        budget,
        scorer=scorer,
        seed=seed,
        simulated_candidates=simulated_candidates,
        deadline=deadline,
        ppm_in_domain=ppm_in_domain,
        judge_confidence=None if judged is None else judged.batch.confidence,
        judge_inconsistent=None if judged is None else judged.batch.inconsistent,
        signals=None if judged is None else judged.signals,
        expected_gain=None if judged is None else judged.expected_gain,
    )
    summary = summarize(
        model,
        tag_matrix,
        result.human_mask,
        domain=domain,
        totals=totals,
        p_wrong=None if judged is None else judged.p_wrong,
        signals=None if judged is None else judged.signals,
    )
    if judged is not None and judged.p_wrong is not None and model is not None:
        summary.correction_model, summary.correction_version = model.correction_name()
    if result.info.get("ppm_tie_breaker") == 0.0:  # the default strategy would have used the PPM in its domain
        summary.warnings.append(
            f"the PPM is outside its domain (or the bundle records none): {result.strategy} routed "
            "by the expected-correction model alone"
        )
    return result, summary


def _explain(model: RoutingModel, tag_matrix: np.ndarray, mask: np.ndarray, top_k: int, decisions: list[Decision]) -> None:
    """Top tags of every instance's PPM gain against the chosen mix (in process)."""
    idx, val = top_tags(model.scorer, tag_matrix, mask, top_k)  # type: ignore[arg-type]
    for d, row_idx, row_val in zip(decisions, idx, val):
        d.top_tags = [(TAG_NAMES[j], float(v)) for j, v in zip(row_idx, row_val) if j >= 0]


def _decisions(ids: Sequence[str], result: strategies.RoutingResult, budget: ResolvedBudget) -> list[Decision]:
    return [
        Decision(id=i, human=bool(h), gain=float(g), human_cost=float(c))
        for i, h, g, c in zip(ids, result.human_mask, result.gains, budget.costs)
    ]


@dataclass(frozen=True)
class BatchText:
    """What the router computes from a batch's texts alone, rows in batch order: ``stats`` (n, 4) float64
    (:func:`~hybridpref.routing_model.correction.text_stats`: words of A, B, the prompt, the responses' word
    overlap) and ``features`` (n, F) float32, the correction features with neutral judge signals and no tagger
    output (the domain check reads their text columns)."""

    stats: np.ndarray
    features: np.ndarray

    @staticmethod
    def of(instances: Sequence[PreferenceInstance]) -> BatchText:
        from hybridpref.routing_model.correction import text_stats

        stats = text_stats(instances)
        return BatchText(stats, text_features(instances, None, stats))

    @staticmethod
    def concat(parts: Sequence[BatchText]) -> BatchText:
        from hybridpref.routing_model.correction import FEATURE_NAMES

        if not parts:
            return BatchText(np.zeros((0, 4)), np.zeros((0, len(FEATURE_NAMES)), np.float32))
        return BatchText(np.concatenate([p.stats for p in parts]), np.concatenate([p.features for p in parts]))


def text_features(
    instances: Sequence[PreferenceInstance], tagged: RouterTags | None = None, stats: np.ndarray | None = None
) -> np.ndarray:
    """Correction features of a chunk without judge signals (their columns neutral) -> (n, F) float32;
    the text columns are what the domain check compares with the bundle's training pools (they do not read
    the tagger: ``tagged`` only fills the measure / tag columns)."""
    from hybridpref.routing_model.correction import correction_features

    n = len(instances)
    neutral = JudgeSignals(np.zeros(n, np.int8), np.full(n, np.nan), np.zeros(n, bool), np.full(n, np.nan))
    return correction_features(
        instances, None if tagged is None else tagged.measures, None if tagged is None else tagged.tag_matrix, neutral, stats
    )


def tagging_reason(
    options: RouteOptions, model: RoutingModel | None, text: BatchText, human_costs: Sequence[float | None]
) -> str:
    """Why this batch must be tagged, or "" when its decision reads no tagger output: the strategy reads the
    PPM's tag gains (:meth:`StrategySpec.needs_tags`; ``hybrid`` only inside the PPM's domain, which the domain
    check decides from text features before any tagging), a cost or auto budget with costs the formula must
    fill (its expertise multiplier comes from the analyzer's tags), or an ONNX correction model that reads the
    tagger's measures or tags (the panel model never does)."""
    strategy = options.strategy
    has_ppm = model is not None and model.scorer is not None
    domain = domain_check(model, text.features) if strategy.predictor == "in_domain" and has_ppm else None
    if strategy.needs_tags(has_ppm, domain is not None and domain.in_domain):
        return f"strategy {strategy.name} reads the PPM's tag gains"
    kind = (
        options.budget.kind
        if options.budget is not None
        else (options.campaign.budget_kind if options.campaign is not None else "count")
    )
    if kind in ("cost", "auto") and any(c is None for c in human_costs):
        return "the cost formula needs the analyzer's expertise level for instances without a human_cost"
    if (
        strategy.needs_judge_first
        and model is not None
        and model.panel is None
        and model.correction is not None
        and model.correction.reads_tags
    ):
        return "the bundle's correction model reads the tagger's measures or tags"
    return ""


def _check_bins(model: RoutingModel | None, tagged: RouterTags) -> None:
    """Tags binned with other edges than the models were trained on would be silently wrong."""
    if (
        model is not None
        and tagged.reference_bins_id
        and model.reference_bins_id
        and tagged.reference_bins_id != model.reference_bins_id
    ):
        raise NotReady(
            f"the tagger bins with reference edges {tagged.reference_bins_id}, the predictor bundle "
            f"{model.bundle_version} was built with {model.reference_bins_id}: deploy matching tagger and bundle"
        )


def _model_features(
    model: RoutingModel | None,
    instances: Sequence[PreferenceInstance],
    tagged: RouterTags | None,
    text: BatchText,
    rows: list[int],
    signals: JudgeSignals,
) -> tuple[tuple[str, ...], np.ndarray]:
    """(column names, (len(rows), F) features) of ``rows`` as the routing correction model reads them: the panel
    features where the bundle (or the campaign) has the panel model, else the ONNX model's correction features."""
    if model is not None and model.panel is not None:
        from hybridpref.routing_model.panel_correction import PANEL_FEATURES, panel_features

        return PANEL_FEATURES, panel_features(instances, signals, text.stats[rows])
    from hybridpref.routing_model.correction import FEATURE_NAMES, correction_features

    return FEATURE_NAMES, correction_features(
        instances,
        None if tagged is None else tagged.measures[rows],
        None if tagged is None else tagged.tag_matrix[rows],
        signals,
        text.stats[rows],
    )


def _p_wrong(model: RoutingModel, features: np.ndarray, top_k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(P(LM label wrong), P(human label wrong), top feature idx (n, k), their log-odds terms (n, k)) of rows with
    features from :func:`_model_features`: from the panel correction model where the bundle (or the campaign) has
    one, else from the bundle's ONNX correction model."""
    if model.panel is not None:
        p_lm, p_h = model.panel.probabilities(features)
        idx, val = top_correction_features(model.panel.lm_terms(), features, top_k)
        return p_lm, p_h, idx, val
    p_lm, p_h = model.correction.probabilities(features)  # type: ignore[union-attr]
    idx, val = top_correction_features(model.correction.model.lm, features, top_k)  # type: ignore[union-attr]
    return p_lm, p_h, idx, val


def campaign_scores(
    model: RoutingModel | None,
    strategy: StrategySpec,
    tag_matrix: np.ndarray,
    budget: ResolvedBudget,
    judged: JudgeFirst,
    features: np.ndarray | None,
    *,
    seed: int,
) -> tuple[np.ndarray, DomainResult | None]:
    """(the strategy's per-instance scores (n,), the domain check) of a campaign batch, in process: what the
    campaign's spending policy ranks by. ``features``: the batch's correction features without judge
    signals, for the domain check."""
    domain = domain_check(model, features)
    scorer = None if model is None or tag_matrix.shape[1] == 0 else model.scorer  # untagged: the PPM is not read
    scores = strategies.scores(
        strategy.name,
        tag_matrix,
        budget,
        scorer=scorer,
        seed=seed,
        expected_gain=judged.expected_gain,
        signals=judged.signals,
        ppm_in_domain=domain is not None and domain.in_domain,
    )
    return scores, domain


def _campaign_budget(db: CampaignStore, vendor: str, name: str) -> tuple[float, float]:
    """(spent, total) of a campaign: the store's light ``budget`` read where it has one (``SqlCampaignStore``),
    else from ``get_campaign``."""
    light = getattr(db, "budget", None)
    if light is not None:
        spent, total = light(vendor, name)
        return float(spent), float(total)
    campaign = db.get_campaign(vendor, name)
    return campaign.spent, campaign.spec.budget_total


def _campaign_decisions(stored: Sequence[StoredDecision], costs: np.ndarray, judged: JudgeFirst) -> list[Decision]:
    """The response's decisions from the store's: for a replayed id what the campaign holds (its route,
    score, cost, LM label and confidence), else this batch's; the strategy's score is the gain."""
    labels = {label.name: label for label in Label}
    inconsistent = np.asarray(judged.batch.inconsistent, dtype=bool).tolist()
    cost = np.asarray(costs, dtype=np.float64).tolist()
    return [
        Decision(
            id=s.instance_id,
            human=s.human,
            lm_label=labels[s.lm_label] if s.lm_label else Label.UNSPECIFIED,
            lm_confidence=s.lm_confidence if s.lm_confidence is not None else 0.0,
            gain=s.score,
            judge_order_inconsistent=inconsistent[i],
            human_cost=s.cost if s.replayed else cost[i],
            expected_gain=s.expected_correction,
            replayed=s.replayed,
            exploration=s.exploration,
        )
        for i, s in enumerate(stored)
    ]


def strategy_family(strategy: StrategySpec) -> str:
    """What a strategy's ``gain`` is: ``ppm``, ``expected`` (corrections), ``doubt``, ``judge_aware`` or
    ``baseline`` (random, all_human, all_lm)."""
    if strategy.needs_expected_gain:
        return "expected"
    if strategy.name == "judge_doubt":
        return "doubt"
    if strategy.name == "judge_aware":
        return "judge_aware"
    if strategy.needs_predictor:
        return "ppm"
    return "baseline"


def _explain_all(
    model: RoutingModel | None,
    strategy: StrategySpec,
    tag_matrix: np.ndarray,
    result: strategies.RoutingResult,
    judged: JudgeFirst | None,
    judged_rows: list[int],
    options: RouteOptions,
    decisions: list[Decision],
) -> None:
    """``top_tags`` and ``reason`` of every decision, whatever the strategy (in process).

    ``top_tags`` explain the strategy's own gain where it has one: the PPM's tags for the PPM strategies,
    the correction model's features for the others wherever a row was judged and the bundle has that
    model; elsewhere the PPM's tags when the bundle has a PPM. So every strategy's decisions carry the
    same fields with the same types (one schema for the decisions file)."""
    family = strategy_family(strategy)
    tagged = tag_matrix.shape[1] > 0  # untagged (the decision read no tags): no PPM tags to explain with
    k = options.explain_top_k
    explained = np.zeros(len(decisions), dtype=bool)
    if model is not None and model.scorer is not None and tagged and family == "ppm":
        _explain(model, tag_matrix, result.human_mask, k, decisions)
        explained[:] = True
    if judged is not None and judged.explained is not None and not explained.all():
        idx, val = judged.explained
        for r, i in enumerate(judged_rows):
            decisions[i].top_tags = [(judged.feature_names[j], float(v)) for j, v in zip(idx[r], val[r]) if j >= 0]
            explained[i] = True
    if model is not None and model.scorer is not None and tagged and not explained.all():
        rest = np.flatnonzero(~explained)
        idx, val = top_tags(model.scorer, tag_matrix, result.human_mask, k)
        for row in rest:
            decisions[row].top_tags = [(TAG_NAMES[j], float(v)) for j, v in zip(idx[row], val[row]) if j >= 0]
    n = len(decisions)
    ranks = rank_descending(result.gains) if n else np.zeros(0, np.int64)
    position = {i: r for r, i in enumerate(judged_rows)}
    for i, d in enumerate(decisions):
        pos = position.get(i)
        p_lm: float | None = None
        p_h: float | None = None
        no_verdict = flip = False
        if judged is not None and pos is not None:
            if judged.p_wrong is not None:
                p_lm, p_h = float(judged.p_wrong[0][pos]), float(judged.p_wrong[1][pos])
            no_verdict = int(judged.batch.labels[pos]) == int(Label.UNSPECIFIED)
            flip = bool(judged.signals.order_flip[pos])
        d.reason = reason(
            strategy.name,
            family,
            d.human,
            d.gain,
            int(ranks[i]),
            n,
            expected=d.expected_gain,
            p_lm_wrong=p_lm,
            p_human_wrong=p_h,
            no_verdict=no_verdict,
            order_flip=flip,
            confidence=d.lm_confidence if pos is not None else None,
            seed=options.seed,
        )


def _concat_signals(parts: list[JudgeSignals]) -> JudgeSignals:
    return JudgeSignals(
        *(
            np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
            for f in ("label", "p_a", "order_flip", "agreement")
        )
    )


def _apply_judgements(decisions: list[Decision], rows: list[int], judged: JudgedBatch) -> None:
    for k, i in enumerate(rows):
        decisions[i].lm_label = Label(int(judged.labels[k]))
        decisions[i].lm_confidence = float(judged.confidence[k])
        decisions[i].judge_order_inconsistent = bool(judged.inconsistent[k])


def _supplied_costs(costs: Sequence[float | None]) -> np.ndarray | None:
    """Per-instance human costs as given; NaN where missing (the budget's formula fills those)."""
    if all(c is None for c in costs):
        return None
    return np.array([np.nan if c is None else c for c in costs], dtype=np.float64)


def _option_violations(options: RouteOptions, n: int) -> list[FieldViolation]:
    """The checks that need the batch size: not empty, and the budget within it (before any work; the
    real costs come after tagging). A campaign's budget is the store's to check."""
    violations = [FieldViolation("instances", "empty batch")] if n == 0 else []
    if options.budget is None:
        if options.campaign is None:
            violations.append(FieldViolation("config.budget", "required: set fraction, count, cost or auto"))
        return violations
    return violations + budgets.budget_violations(options.budget, n)


def _instance_violations(
    instances: Sequence[PreferenceInstance], origin: Sequence[int], seen: dict[str, int], max_batch: int | None = None
) -> list[FieldViolation]:
    """Every instance's violations, ``instances[i]`` counted in the caller's whole batch or stream
    (``origin[k]`` for the k-th instance), ids unique across a stream's chunks (``seen``: id -> index)."""
    violations: list[FieldViolation] = []
    try:
        validate_instances(instances, max_batch)
    except InvalidInput as exc:
        violations.extend(_at_origin(v, origin) for v in exc.violations)
    for k, inst in enumerate(instances):  # a campaign stores what it routes: no NUL (routed without one too)
        violations += [FieldViolation(f"instances[{origin[k]}].{name}", NUL_TEXT) for name in fields_with_nul(inst)]
    start = origin[0] if len(origin) else 0  # duplicates inside the chunk are validate_instances' to name
    for k, inst in enumerate(instances):
        if inst.id in seen and seen[inst.id] < start:
            violations.append(
                FieldViolation(f"instances[{origin[k]}].id", f"duplicate id {inst.id!r} (first at instances[{seen[inst.id]}])")
            )
        seen.setdefault(inst.id, origin[k])
    return violations


def _at_origin(violation: FieldViolation, origin: Sequence[int]) -> FieldViolation:
    """``instances[k]...`` -> ``instances[origin[k]]...``."""
    match = re.match(r"^instances\[(\d+)\]", violation.field)
    if not match or int(match.group(1)) >= len(origin):
        return violation
    return FieldViolation(f"instances[{origin[int(match.group(1))]}]" + violation.field[match.end() :], violation.description)


def _with_rejected(outcome: RouteOutcome, rejected: list[Rejected]) -> RouteOutcome:
    outcome.rejected_count = len({r.index for r in rejected})
    outcome.rejected = rejected[:MAX_REJECTS_LISTED]
    if rejected:
        outcome.summary.warnings.append(
            f"{outcome.rejected_count} invalid instances were left out (skip_invalid_instances): see the summary's rejected list"
        )
    return outcome


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start


# Words -> tokens for the cost formula when the tagger (which counts cl100k tokens) did not run; measured on the
# three shared pools: 1.33 cl100k tokens per whitespace word (docs/EVALUATION.md, "The default path and the tagger").
TOKENS_PER_WORD = 1.33


def _cost_inputs(tagged: RouterTags | None, text: BatchText | None = None) -> dict[str, np.ndarray]:
    """Inputs of the cost formula: the tagger's token counts and expertise level, or (untagged) word counts."""
    if tagged is None:
        assert text is not None
        return {
            "prompt_tokens": text.stats[:, 2] * TOKENS_PER_WORD,
            "response_tokens": (text.stats[:, 0] + text.stats[:, 1]) * TOKENS_PER_WORD,
        }
    col = {m: i for i, m in enumerate(LEXICAL_MEASURES)}
    expertise = budgets.expertise_levels_from_tags(tagged.tag_matrix)
    return {
        "prompt_tokens": tagged.measures[:, col["prompt_len"]],
        "response_tokens": tagged.measures[:, col["len_shorter"]] + tagged.measures[:, col["len_longer"]],
        "expertise_level": expertise,
    }
