"""Thin gRPC servicer over ``RouterCore``: proto <-> core conversion only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from hybridpref.router.budget import Budget, budget_violations
from hybridpref.router.campaign import CampaignRoute
from hybridpref.router.campaign_proto import campaign_model_to_proto
from hybridpref.router.core import Incoming, RouteOptions, RouteOutcome, RouterCore
from hybridpref.router.downstream import JudgeClient, PredictorModelClient, TaggerClient
from hybridpref.router.limits import MAX_NAME_CHARS, config_violations
from hybridpref.router.progress import StageProgress, with_progress
from hybridpref.router.readiness import BackendWatcher
from hybridpref.router.rejects import by_instance, rejected_of
from hybridpref.router.strategies import DEFAULT_STRATEGY, StrategySpec, campaign_strategy_spec, strategy_spec
from hybridpref.router.summary import Estimate
from hybridpref.server import deadline as deadlines
from hybridpref.server import logs
from hybridpref.server.auth import current_vendor
from hybridpref.server.channels import remaining_timeout
from hybridpref.server.metrics import Metrics
from hybridpref.server.server import ServiceHandle
from hybridpref.server.settings import LimitsSettings, Settings
from hybridpref.store.api import DEFAULT_VENDOR
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc
from hybridpref_client.core.convert import check_count, instance_from_proto, instances_from_proto
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PositionMode
from hybridpref_client.core.limits import Limits, proto_instance_violations

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
DECISION_CHUNK = 1000


def budget_from_proto(budget: common_pb2.Budget) -> Budget | None:
    """The oneof as a :class:`Budget` (unchecked); ``None`` when none is set."""
    kind = budget.WhichOneof("kind")
    return None if kind is None else Budget(kind, getattr(budget, kind))


def options_from_proto(config: router_pb2.RouteConfig, default_strategy: StrategySpec, limits: LimitsSettings) -> RouteOptions:
    """Core options from the request's config, after the checks that need no batch size: the ranges of
    ``router.limits``, the strategy's name and the budget's shape. ``default_strategy``: for a config that
    names none."""
    violations = config_violations(config, limits)
    budget = budget_from_proto(config.budget)
    if budget is not None:
        violations += budget_violations(budget, None, max_cost=limits.max_budget_cost, max_n=limits.max_stream_instances)
    strategy = default_strategy
    if config.strategy and len(config.strategy) <= MAX_NAME_CHARS:  # a longer name is already refused
        try:
            strategy = strategy_spec(config.strategy)
        except InvalidInput as exc:
            violations += exc.violations
    if violations:
        raise InvalidInput(violations)
    return RouteOptions(
        budget=budget,
        strategy=strategy,
        seed=config.seed,
        judge_mode=PositionMode(config.judge_position_mode),
        judge_template=config.judge_template,
        replay_judge=config.replay_judge,
        explain_top_k=config.explain_top_k if config.HasField("explain_top_k") else 3,
        simulated_candidates=config.simulated_candidates,
        skip_invalid=config.skip_invalid_instances,
    )


def convert(msgs: Sequence[common_pb2.PreferenceInstance], limits: Limits, offset: int, skip_invalid: bool) -> Incoming:
    """Proto instances -> core ones, ``instances[i]`` counted from ``offset`` in the caller's batch or
    stream. An instance that cannot be converted (sizes, enum values) refuses the call, or with
    ``skip_invalid`` is left out and listed."""
    if not skip_invalid:
        return Incoming(instances_from_proto(msgs, limits, offset), range(offset, offset + len(msgs)))
    per, other = by_instance(proto_instance_violations(msgs, limits, offset))
    if other:
        raise InvalidInput(other)
    keep = [k for k in range(len(msgs)) if k + offset not in per]
    rejected = rejected_of(per, {i: msgs[i - offset].id for i in per})
    return Incoming([instance_from_proto(msgs[k]) for k in keep], [k + offset for k in keep], rejected)


def decisions_to_proto(outcome: RouteOutcome, start: int = 0, stop: int | None = None) -> list[router_pb2.RoutingDecision]:
    return [
        router_pb2.RoutingDecision(
            id=d.id,
            route=common_pb2.ROUTE_HUMAN if d.human else common_pb2.ROUTE_LM,
            lm_label=common_pb2.PreferenceLabel.ValueType(int(d.lm_label)),
            lm_confidence=d.lm_confidence,
            gain=d.gain,
            top_tags=[common_pb2.TagContribution(tag=t, contribution=c) for t, c in d.top_tags],
            judge_order_inconsistent=d.judge_order_inconsistent,
            human_cost=d.human_cost,
            expected_gain=d.expected_gain,
            reason=d.reason,
            replayed=d.replayed,
            exploration=d.exploration,
        )
        for d in outcome.decisions[start:stop]
    ]


def summary_to_proto(outcome: RouteOutcome) -> router_pb2.RoutingSummary:
    humans = sum(d.human for d in outcome.decisions)
    core = outcome.summary
    summary = router_pb2.RoutingSummary(
        strategy=outcome.strategy,
        bundle_version=outcome.bundle_version,
        human_count=humans,
        lm_count=len(outcome.decisions) - humans,
        human_cost=outcome.human_cost,
        stage_seconds=outcome.stage_seconds,
        request_id=logs.current_request_id() or "",
        interval_level=core.level,
        warnings=core.warnings,
        correction_model=core.correction_model,
        correction_model_version=core.correction_version,
    )
    for mix in core.mixes:
        out = summary.mixes.add(mix=mix.mix, human_count=mix.human_count, score_note=mix.score_note)
        if mix.score is not None:
            out.predicted_score.CopyFrom(_estimate(mix.score))
        if mix.corrections is not None:
            out.expected_corrections.CopyFrom(_estimate(mix.corrections))
    summary.rejected.extend(
        router_pb2.RejectedInstance(index=r.index, id=r.id, field=r.field, description=r.description) for r in outcome.rejected
    )
    summary.rejected_count = outcome.rejected_count
    if core.domain is not None:
        d = core.domain
        summary.domain.CopyFrom(
            router_pb2.DomainCheck(
                distance=d.distance,
                threshold=d.threshold,
                in_domain=d.in_domain,
                nearest_pool=d.nearest_pool,
                distance_kind=d.distance_kind,
            )
        )
    if outcome.campaign is not None:
        c = outcome.campaign
        summary.campaign.CopyFrom(
            router_pb2.CampaignProgress(
                name=c.name, batch=c.batch, budget_spent=c.budget_spent, budget_left=c.budget_left, replayed=c.replayed
            )
        )
        if c.expected_changes is not None:
            e = c.expected_changes
            summary.campaign.expected_changes.CopyFrom(router_pb2.Estimate(value=e.estimate, low=e.low, high=e.high))
        if c.model is not None:
            summary.campaign.model.CopyFrom(campaign_model_to_proto(c.model))
    return summary


def _estimate(e: Estimate) -> router_pb2.Estimate:
    return router_pb2.Estimate(value=e.value, low=e.low, high=e.high)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.limits = Limits.from_settings(settings.limits)
        # Resolved and checked once, at start: a misconfigured default fails here, not on every call.
        self.default_strategy = strategy_spec(settings.router.default_strategy or DEFAULT_STRATEGY)
        # The real gRPC clients; the core only knows the backends' protocols.
        self.clients = (
            TaggerClient(settings.router.tagger_address, settings),
            JudgeClient(settings.router.judge_address, settings),
            PredictorModelClient(settings.router.predictor_address, settings),
        )
        self.core = RouterCore(settings, *self.clients, metrics=metrics)

    async def close(self) -> None:
        await self.core.close()
        for client in self.clients:
            await client.close()

    def vendor(self) -> str:
        """The calling vendor: its API key's, or the one vendor of a router without keys."""
        return current_vendor() or DEFAULT_VENDOR

    async def _for_campaign(self, options: RouteOptions, config: router_pb2.RouteConfig) -> RouteOptions:
        """``options`` for the campaign ``config`` names (as they are without one): the campaign's strategy and
        judge (a request may repeat them, not change them), its budget kind, the batch's name (default: the
        request id). ``NotFound`` for a campaign the caller does not have."""
        if not config.campaign:
            return options
        vendor = self.vendor()
        store = await self.core.executor.run(self.core.campaigns.get)
        campaign = await self.core.executor.run(store.get_campaign, vendor, config.campaign)
        spec = campaign.spec
        strategy = campaign_strategy_spec(spec.strategy or self.default_strategy.name, "config.campaign")
        violations = []
        if config.strategy and config.strategy != strategy.name:
            violations.append(
                FieldViolation(
                    "config.strategy",
                    f"campaign {config.campaign!r} routes with {strategy.name!r}: leave strategy unset or name that one",
                )
            )
        if config.replay_judge and config.replay_judge != spec.judge:
            violations.append(
                FieldViolation(
                    "config.replay_judge",
                    f"campaign {config.campaign!r} is judged by {spec.judge or 'the judge service'!r}: leave replay_judge unset",
                )
            )
        if violations:
            raise InvalidInput(violations)
        batch = config.batch or logs.current_request_id() or uuid.uuid4().hex
        options.strategy = strategy
        options.replay_judge = spec.judge
        options.campaign = CampaignRoute(vendor, config.campaign, batch, spec.budget_kind)
        return options

    def _deadline(self, context: Any) -> deadlines.Deadline:
        """The call's Deadline (bound by DeadlineInterceptor), else one from the context."""
        return deadlines.current() or deadlines.Deadline(remaining_timeout(context))

    async def RouteInstances(self, request: router_pb2.RouteInstancesRequest, context: Any) -> router_pb2.RouteInstancesResponse:
        options = options_from_proto(request.config, self.default_strategy, self.settings.limits)
        options = await self._for_campaign(options, request.config)
        run = self.core.executor.run
        # Counted before anything is converted: a million tiny instances cost microseconds to refuse.
        check_count(len(request.instances), self.settings.limits.max_batch)
        incoming = await run(convert, request.instances, self.limits, 0, options.skip_invalid, size=len(request.instances))
        outcome = await self.core.route(incoming, options, self._deadline(context))
        return await run(
            lambda: router_pb2.RouteInstancesResponse(decisions=decisions_to_proto(outcome), summary=summary_to_proto(outcome))
        )

    async def RouteInstancesStream(
        self, request_iterator: AsyncIterator[router_pb2.RouteInstancesStreamRequest], context: Any
    ) -> AsyncIterator[router_pb2.RouteInstancesStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("item") != "config":
            raise InvalidInput(FieldViolation("stream[0]", "the first message must carry config"))
        options = options_from_proto(first.config, self.default_strategy, self.settings.limits)
        options = await self._for_campaign(options, first.config)
        run = self.core.executor.run

        async def chunks() -> AsyncIterator[Incoming]:
            index, seen = 1, 0
            async for message in request_iterator:
                if message.WhichOneof("item") != "chunk":
                    raise InvalidInput(FieldViolation(f"stream[{index}]", "config may only come first"))
                size = len(message.chunk.instances)
                # Counted before conversion: one chunk holds at most a unary batch, and the stream's total.
                check_count(
                    size, self.settings.limits.max_batch, f"stream[{index}].chunk.instances", "a chunk", "send smaller chunks"
                )
                check_count(
                    seen + size,
                    self.settings.limits.max_stream_instances,
                    "instances",
                    "the stream",
                    "split it into several requests",
                )
                chunk = await run(convert, message.chunk.instances, self.limits, seen, options.skip_invalid, size=size)
                seen += size
                yield chunk
                index += 1

        work = self.core.route_stream(chunks(), options, self._deadline(context))
        if not first.config.report_progress:
            outcome = await work
        else:
            async for item in with_progress(work):
                if isinstance(item, StageProgress):
                    yield router_pb2.RouteInstancesStreamResponse(
                        progress=router_pb2.RouteProgress(stage=item.stage, done=item.done, total=item.total)
                    )
                else:
                    outcome = item
        for start in range(0, len(outcome.decisions), DECISION_CHUNK):
            chunk = await run(decisions_to_proto, outcome, start, start + DECISION_CHUNK)
            yield router_pb2.RouteInstancesStreamResponse(decisions=router_pb2.DecisionChunk(decisions=chunk))
        yield router_pb2.RouteInstancesStreamResponse(summary=summary_to_proto(outcome))


def router_handle(settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    """The router process's services: ``RouterService`` and ``CampaignService`` on one port, one set of
    interceptors (the vendor comes from the API key), one worker pool and one campaign store."""
    from hybridpref.router.campaign_servicer import SERVICE_NAME as CAMPAIGN_SERVICE_NAME
    from hybridpref.router.campaign_servicer import CampaignServicer
    from hybridpref.v1 import campaign_pb2_grpc

    metrics = metrics or Metrics.default()
    servicer = RouterServicer(settings, metrics)
    campaigns = CampaignServicer(servicer)

    def register(server: Any) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
        campaign_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, server)

    handle = ServiceHandle(
        name="router",
        service_names=(SERVICE_NAME, CAMPAIGN_SERVICE_NAME),
        register=register,
        load=lambda: None,
    )
    # Readiness follows the backends (and a responsive worker pool); "" stays SERVING while the process is up.
    watcher = BackendWatcher(settings, servicer.core.executor, metrics, on_change=lambda: [f() for f in handle.on_health_change])
    handle.ready = watcher.ready
    handle.start = watcher.start
    for client in servicer.clients:  # calls to a backend known down fail fast
        client.gate = watcher

    async def close() -> None:
        await watcher.stop()
        await servicer.close()

    handle.close = close
    return handle
