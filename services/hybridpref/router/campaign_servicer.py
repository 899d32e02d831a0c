"""Thin gRPC servicer of ``hybridpref.v1.CampaignService`` over the campaign store (``hybridpref.store``).

It runs in the router process, on the router's port and behind its interceptors: the vendor is the caller's
API key (``hybridpref.server.auth.current_vendor``), or :data:`~hybridpref.store.api.DEFAULT_VENDOR` when the
router runs without keys. It shares the router's worker pool (every store call is blocking I/O, run off the
event loop) and its store (``RouterCore.campaigns``, opened on the first campaign call). Conversion between
messages and the store's types is all it does; the store validates, and its errors map to status codes in
``hybridpref_client.core.grpc_errors`` (``NotFound`` -> NOT_FOUND, ``AlreadyExists`` -> ALREADY_EXISTS,
``InvalidInput`` -> INVALID_ARGUMENT with field violations).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC
from itertools import islice
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from hybridpref.router.adaptation import CampaignModel
from hybridpref.router.campaign_proto import campaign_model_to_proto
from hybridpref.router.core import RouterCore
from hybridpref.router.strategies import StrategySpec, campaign_strategy_spec
from hybridpref.server.settings import Settings
from hybridpref.store.api import (
    AnnotatorStats,
    Campaign,
    CampaignSpec,
    CampaignStatus,
    CampaignStore,
    HumanLabel,
    Interval,
    LabelResult,
)
from hybridpref.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2
from hybridpref_client.core.errors import FieldViolation, InvalidInput


class RouterSide(Protocol):
    """What the campaign servicer uses of the ``RouterServicer`` it sits beside (a protocol, so that the two
    servicer modules do not import each other)."""

    core: RouterCore
    settings: Settings
    default_strategy: StrategySpec

    def vendor(self) -> str: ...


SERVICE_NAME = campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name
EXPORT_CHUNK = 1000  # rows per ExportDatasetResponse
PREFERENCES = {
    campaign_pb2.HUMAN_PREFERENCE_A: "A",
    campaign_pb2.HUMAN_PREFERENCE_B: "B",
    campaign_pb2.HUMAN_PREFERENCE_TIE: "tie",
}
STATUSES = {
    "stored": campaign_pb2.LABEL_STATUS_STORED,
    "unchanged": campaign_pb2.LABEL_STATUS_UNCHANGED,
    "replaced": campaign_pb2.LABEL_STATUS_REPLACED,
    "rejected": campaign_pb2.LABEL_STATUS_REJECTED,
}
FORMATS = {
    campaign_pb2.EXPORT_FORMAT_UNSPECIFIED: "trl",
    campaign_pb2.EXPORT_FORMAT_TRL: "trl",
    campaign_pb2.EXPORT_FORMAT_POOL: "pool",
    campaign_pb2.EXPORT_FORMAT_TRL_CHAT: "trl-chat",
}
DEFAULT_PENDING_PAGE = 500  # ListPendingPairs' page when the caller names none
MAX_PENDING_PAGE = 1000  # the store's largest page
# The store names its fields as its API does; the messages' names are what the caller sent.
_FIELD_NAMES = ((".instance_id:", ".id:"), (".preference:", ".label:"), (".labelled_at:", ".labelled_at:"))


# ---- messages -> store ---------------------------------------------------------------------------------


def spec_from_proto(settings: campaign_pb2.CampaignSettings, vendor: str, default_strategy: str) -> CampaignSpec:
    """The store's spec of a ``CreateCampaign``: the strategy resolved (``""`` -> the router's default, kept
    by name so the campaign routes with it whatever the default later becomes) and checked to have a
    per-instance score; the budget required. Raises ``InvalidInput`` naming ``settings.<field>``."""
    violations: list[FieldViolation] = []
    kind = settings.budget.WhichOneof("kind") if settings.HasField("budget") else None
    if kind is None:
        violations.append(FieldViolation("settings.budget", "required: count (human labels) or cost (cost units)"))
    elif kind == "cost" and not (math.isfinite(settings.budget.cost) and settings.budget.cost >= 0):
        violations.append(FieldViolation("settings.budget.cost", f"must be a finite number >= 0, got {settings.budget.cost}"))
    strategy = settings.strategy or default_strategy
    try:
        campaign_strategy_spec(strategy, "settings.strategy")
    except InvalidInput as exc:
        violations += exc.violations
    if violations:
        raise InvalidInput(violations)
    assert kind is not None  # refused above
    total = float(settings.budget.count) if kind == "count" else float(settings.budget.cost)
    return CampaignSpec(
        vendor=vendor,
        name=settings.name,
        budget_kind=kind,
        budget_total=total,
        strategy=strategy,
        judge=settings.judge,
        votes_per_pair=settings.votes_per_pair or 1,
        expected_instances=settings.expected_instances if settings.HasField("expected_instances") else None,
        exploration_share=settings.exploration_share,
    )


def labels_from_proto(labels: Sequence[campaign_pb2.HumanLabel], source: str = "") -> list[HumanLabel]:
    """The store's labels (an unset label or an out-of-range strength is passed on as given: the store
    rejects that item, and only that one); ``source``: the request's, "" = "api"."""
    out = []
    for item in labels:
        out.append(
            HumanLabel(
                instance_id=item.id,
                annotator=item.annotator,
                preference=PREFERENCES.get(item.label, ""),  # type: ignore[arg-type]
                strength=item.strength if item.HasField("strength") else None,
                rationale=item.rationale,
                labelled_at=_labelled_at(item) if item.HasField("labelled_at") else None,
                source=source or "api",
            )
        )
    return out


def _labelled_at(item: campaign_pb2.HumanLabel) -> Any:
    """The label's time as a datetime; one outside datetime's years 1..9999 is passed on as a description,
    which the store rejects for that item alone (it used to fail the whole request)."""
    try:
        return item.labelled_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return f"out of range ({item.labelled_at.seconds} s from 1970)"


# ---- store -> messages ---------------------------------------------------------------------------------


def campaign_to_proto(c: Campaign) -> campaign_pb2.Campaign:
    spec = c.spec
    budget = (
        campaign_pb2.CampaignBudget(count=int(spec.budget_total))
        if spec.budget_kind == "count"
        else campaign_pb2.CampaignBudget(cost=spec.budget_total)
    )
    settings = campaign_pb2.CampaignSettings(
        name=spec.name,
        budget=budget,
        strategy=spec.strategy,
        judge=spec.judge,
        votes_per_pair=spec.votes_per_pair,
        exploration_share=spec.exploration_share,
    )
    if spec.expected_instances is not None:
        settings.expected_instances = spec.expected_instances
    created = Timestamp()
    created.FromDatetime(c.created_at)
    out = campaign_pb2.Campaign(
        settings=settings,
        created_at=created,
        budget_spent=c.spent,
        budget_left=max(0.0, spec.budget_total - c.spent),
        routed=c.routed,
        human_routed=c.human_routed,
        labels_returned=c.labels_returned,
        pairs_pending=c.pairs_pending,
    )
    if c.closed_at is not None:
        out.closed_at.FromDatetime(c.closed_at)
    return out


def status_to_proto(s: CampaignStatus) -> campaign_pb2.CampaignStatus:
    out = campaign_pb2.CampaignStatus(
        labels_pending=s.labels_pending,
        realised_corrections=s.realised_corrections,
        expected_known=s.expected_known,
        realised_changes=s.realised_changes,
        changes_known=s.changes_known,
    )
    for name in ("agreement", "audit_agreement", "expected_corrections", "expected_changes"):
        value: Interval | None = getattr(s, name)
        if value is not None:
            getattr(out, name).CopyFrom(campaign_pb2.Interval(estimate=value.estimate, low=value.low, high=value.high))
    return out


def annotator_to_proto(a: AnnotatorStats) -> campaign_pb2.AnnotatorStats:
    out = campaign_pb2.AnnotatorStats(annotator=a.annotator, votes=a.votes)
    for name in ("with_others", "with_lm"):
        value: Interval | None = getattr(a, name)
        if value is not None:
            getattr(out, name).CopyFrom(campaign_pb2.Interval(estimate=value.estimate, low=value.low, high=value.high))
    return out


def result_to_proto(r: LabelResult) -> campaign_pb2.LabelResult:
    error = r.error
    for old, new in _FIELD_NAMES:
        error = error.replace(old, new)
    return campaign_pb2.LabelResult(index=r.index, id=r.instance_id, status=STATUSES[r.status], audit=r.audit, error=error)


def trl_row_to_proto(row: dict[str, Any]) -> campaign_pb2.TrlRow:
    """A ``trl`` or ``trl-chat`` row (its turns: ``prompt_messages``, one assistant turn each side)."""
    chat = isinstance(row["prompt"], list)
    out = campaign_pb2.TrlRow(
        id=row["id"],
        prompt="" if chat else row["prompt"],
        chosen=row["chosen"][0]["content"] if chat else row["chosen"],
        rejected=row["rejected"][0]["content"] if chat else row["rejected"],
        prompt_messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in row["prompt"]] if chat else [],
        label_source=row["label_source"],
        judge=row["judge"],
        votes=row["votes"],
        tie=row["tie"],
        campaign=row["campaign"],
        batch=row["batch"],
        human_routed=row["human_routed"],
    )
    if row["confidence"] is not None:
        out.confidence = row["confidence"]
    return out


def pool_row_to_proto(row: dict[str, Any]) -> campaign_pb2.PoolRow:
    out = campaign_pb2.PoolRow(
        id=row["id"],
        source=row["source"],
        prompt=row["prompt"],
        response_a=row["response_a"],
        response_b=row["response_b"],
        human_label=row["human_label"],
        human_votes=row["human_votes"],
        lm_labels=row["lm_labels"],
        campaign=row["campaign"],
        batch=row["batch"],
        human_routed=row["human_routed"],
        exploration=row["exploration"],
        score=row["score"],
    )
    if row["expected_correction"] is not None:
        out.expected_correction = row["expected_correction"]
    return out


def export_chunk(rows: Iterator[dict[str, Any]], fmt: str) -> campaign_pb2.ExportDatasetResponse | None:
    """The next ``EXPORT_CHUNK`` rows as one message; ``None`` when the rows are done."""
    chunk = list(islice(rows, EXPORT_CHUNK))
    if not chunk:
        return None
    if fmt in ("trl", "trl-chat"):
        return campaign_pb2.ExportDatasetResponse(trl_rows=[trl_row_to_proto(r) for r in chunk])
    return campaign_pb2.ExportDatasetResponse(pool_rows=[pool_row_to_proto(r) for r in chunk])


# ---- the servicer ---------------------------------------------------------------------------------------


class CampaignServicer(campaign_pb2_grpc.CampaignServiceServicer):
    """``CampaignService`` beside a ``RouterServicer`` (its worker pool, store, vendor and metrics)."""

    def __init__(self, router: RouterSide) -> None:
        self.router = router
        self.core = router.core
        self.metrics = router.core.metrics
        self.max_labels = router.settings.limits.max_batch

    async def _store(self) -> CampaignStore:
        return await self.core.executor.run(self.core.campaigns.get)

    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: Any
    ) -> campaign_pb2.CreateCampaignResponse:
        spec = spec_from_proto(request.settings, self.router.vendor(), self.router.default_strategy.name)
        store = await self._store()
        campaign = await self.core.executor.run(store.create_campaign, spec)
        return campaign_pb2.CreateCampaignResponse(campaign=campaign_to_proto(campaign))

    async def UpdateCampaign(
        self, request: campaign_pb2.UpdateCampaignRequest, context: Any
    ) -> campaign_pb2.UpdateCampaignResponse:
        store = await self._store()
        campaign = await self.core.executor.run(update_campaign, store, self.router.vendor(), request)
        return campaign_pb2.UpdateCampaignResponse(campaign=campaign_to_proto(campaign))

    async def CloseCampaign(self, request: campaign_pb2.CloseCampaignRequest, context: Any) -> campaign_pb2.CloseCampaignResponse:
        store = await self._store()
        campaign = await self.core.executor.run(store.close_campaign, self.router.vendor(), request.name)
        return campaign_pb2.CloseCampaignResponse(campaign=campaign_to_proto(campaign))

    async def GetCampaign(self, request: campaign_pb2.GetCampaignRequest, context: Any) -> campaign_pb2.GetCampaignResponse:
        store = await self._store()
        vendor = self.router.vendor()
        status = await self.core.executor.run(store.status, vendor, request.name)
        out = campaign_pb2.GetCampaignResponse(
            campaign=campaign_to_proto(status.campaign),
            status=status_to_proto(status),
            annotators=[annotator_to_proto(a) for a in status.annotators],
        )
        model = await self._campaign_model(vendor, request.name, context)
        if model is not None:
            out.model.CopyFrom(campaign_model_to_proto(model.describe()))
        return out

    async def _campaign_model(self, vendor: str, name: str, context: Any) -> CampaignModel | None:
        """The correction model that routes the campaign's next batch (cached; refitted when enough new labels
        came back), or None when the bundle has no panel model or the predictor cannot be reached."""
        from hybridpref.server.channels import remaining_timeout
        from hybridpref.server.deadline import Deadline
        from hybridpref_client.core.errors import BackendUnavailable, NotReady

        try:
            bundle = await self.core.models.routing_model(Deadline(min(5.0, remaining_timeout(context) or 5.0)))
        except (NotReady, BackendUnavailable):
            return None
        if bundle.panel is None:
            return None
        return await self.core.executor.run(self.core.adaptation.model_for, vendor, name, bundle)

    async def ListCampaigns(self, request: campaign_pb2.ListCampaignsRequest, context: Any) -> campaign_pb2.ListCampaignsResponse:
        store = await self._store()
        campaigns = await self.core.executor.run(store.list_campaigns, self.router.vendor())
        return campaign_pb2.ListCampaignsResponse(campaigns=[campaign_to_proto(c) for c in campaigns])

    async def SubmitLabels(self, request: campaign_pb2.SubmitLabelsRequest, context: Any) -> campaign_pb2.SubmitLabelsResponse:
        if len(request.labels) > self.max_labels:
            raise InvalidInput(FieldViolation("labels", f"{len(request.labels)} labels; at most {self.max_labels} per call"))
        vendor = self.router.vendor()
        labels = labels_from_proto(request.labels, request.source)
        store = await self._store()
        results = await self.core.executor.run(store.submit_labels, vendor, request.campaign, labels, size=len(labels))
        await self._count_labels(store, vendor, request.campaign, labels, results)
        if any(r.status in ("stored", "replaced") for r in results):
            self.core.adaptation.labels_arrived(vendor, request.campaign)  # refit off the request path when due
        return campaign_pb2.SubmitLabelsResponse(results=[result_to_proto(r) for r in results])

    async def RetractLabels(self, request: campaign_pb2.RetractLabelsRequest, context: Any) -> campaign_pb2.RetractLabelsResponse:
        if len(request.ids) > self.max_labels:
            raise InvalidInput(FieldViolation("ids", f"{len(request.ids)} ids; at most {self.max_labels} per call"))
        vendor = self.router.vendor()
        store = await self._store()
        ids = list(request.ids) or None
        retracted = await self.core.executor.run(
            lambda: store.retract_labels(vendor, request.campaign, request.annotator, ids), size=len(request.ids)
        )
        if retracted:
            self.metrics.campaign_labels.labels(vendor, "retracted").inc(retracted)
            self.core.adaptation.labels_arrived(vendor, request.campaign)  # the refit reads only the votes left
        return campaign_pb2.RetractLabelsResponse(retracted=retracted)

    async def _count_labels(
        self, store: CampaignStore, vendor: str, campaign: str, labels: list[HumanLabel], results: list[LabelResult]
    ) -> None:
        """Label outcomes per vendor; for each new non-tie vote on a pair with a non-tie LM label, whether it
        agrees with the LM label and the agreement the routing expected (the alert compares the two)."""
        for status in STATUSES:
            n = sum(r.status == status for r in results)
            if n:
                self.metrics.campaign_labels.labels(vendor, status).inc(n)
        new = [
            (labels[r.index].instance_id, labels[r.index].preference)
            for r in results
            if r.status == "stored" and labels[r.index].preference in ("A", "B")
        ]
        lm_expectations = getattr(store, "lm_expectations", None)  # SqlCampaignStore's; not in the contract
        if not new or lm_expectations is None:
            return
        expectations = await self.core.executor.run(lm_expectations, vendor, campaign, [i for i, _ in new])
        agree = disagree = 0
        expected = 0.0
        for instance_id, preference in new:
            lm_label, p_right = expectations.get(instance_id, (None, None))
            winner = _winner(lm_label)
            if winner is None or p_right is None:
                continue
            agree += winner == preference
            disagree += winner != preference
            expected += p_right
        if agree + disagree:
            self.metrics.campaign_agreement_votes.labels(vendor, "agree").inc(agree)
            self.metrics.campaign_agreement_votes.labels(vendor, "disagree").inc(disagree)
            self.metrics.campaign_expected_agreement.labels(vendor).inc(expected)

    async def ListPendingPairs(
        self, request: campaign_pb2.ListPendingPairsRequest, context: Any
    ) -> campaign_pb2.ListPendingPairsResponse:
        size = request.page_size or DEFAULT_PENDING_PAGE
        if size > MAX_PENDING_PAGE:
            raise InvalidInput(FieldViolation("page_size", f"at most {MAX_PENDING_PAGE}, got {size}"))
        store = await self._store()
        try:
            pairs = await self.core.executor.run(
                store.pending_pairs, self.router.vendor(), request.campaign, request.annotator, size, request.page_token
            )
        except InvalidInput as exc:  # the store names its arguments; the caller sent the request's fields
            renamed = {"after": "page_token", "limit": "page_size"}
            raise InvalidInput([FieldViolation(renamed.get(v.field, v.field), v.description) for v in exc.violations]) from None
        return campaign_pb2.ListPendingPairsResponse(
            pairs=[
                campaign_pb2.PendingPair(
                    id=p.instance_id,
                    prompt=p.prompt,
                    response_a=p.response_a,
                    response_b=p.response_b,
                    votes=p.votes,
                    votes_needed=p.votes_needed,
                )
                for p in pairs
            ],
            next_page_token=pairs[-1].instance_id if len(pairs) == size else "",
        )

    async def ExportDataset(
        self, request: campaign_pb2.ExportDatasetRequest, context: Any
    ) -> AsyncIterator[campaign_pb2.ExportDatasetResponse]:
        fmt = FORMATS.get(request.format)
        if fmt is None:
            raise InvalidInput(FieldViolation("format", f"unknown export format {request.format}"))
        store = await self._store()
        run = self.core.executor.run
        rows = store.export_rows(self.router.vendor(), request.campaign, fmt)  # type: ignore[arg-type]  # a generator: reads on first next()
        try:
            while True:
                message = await run(export_chunk, rows, fmt)
                if message is None:
                    return
                yield message
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # a caller who left: the read transaction ends now, not at garbage collection


def update_campaign(store: CampaignStore, vendor: str, request: campaign_pb2.UpdateCampaignRequest) -> Campaign:
    """``UpdateCampaign`` on the store: the new total in the campaign's own unit (a count budget stays a count),
    the store's field names turned into the request's."""
    kind = request.budget.WhichOneof("kind") if request.HasField("budget") else None
    total = None if kind is None else float(getattr(request.budget, kind))
    expected = request.expected_instances if request.HasField("expected_instances") else None
    try:
        return store.update_campaign(vendor, request.name, budget_total=total, expected_instances=expected, budget_kind=kind)
    except InvalidInput as exc:
        renamed = {"budget.total": f"budget.{kind}"}
        raise InvalidInput([FieldViolation(renamed.get(v.field, v.field), v.description) for v in exc.violations]) from None


def _winner(lm_label: str | None) -> str | None:
    from hybridpref_client.core.instances import Label

    return Label[lm_label].winner if lm_label else None
