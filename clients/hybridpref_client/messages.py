"""What the sync and async clients send and read, built in one place so the two cannot drift:
instances (``PreferenceInstance`` objects or plain dicts) -> request messages, and response messages
-> ``RouteResult`` (decisions and the summary); campaigns (``CampaignService``): the settings of a new
campaign, human labels (``HumanLabel`` objects or dicts) -> request messages, and responses ->
``Campaign``, ``CampaignStatus``, ``LabelResult`` and dataset rows (dicts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from hybridpref.v1 import campaign_pb2, common_pb2, router_pb2
from hybridpref_client.budget import Budget, resolve_budget
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, instance_from_row

STREAM_CHUNK = 500

# One input row: a PreferenceInstance, or a dict in the JSONL schema (id, prompt or messages,
# response_a, response_b, optional metadata, human_label, lm_labels, human_cost).
InstanceLike = PreferenceInstance | Mapping[str, Any]
# on_progress(phase, n): ("sent", k) per chunk sent; ("tagged" | "judged" | "stored", k): k more instances
# through that stage of the router's work; ("received", k) per decision chunk received; ("retry", attempt)
# before a retry (the counts then start again).
Progress = Callable[[str, int], None]


@dataclass
class Decision:
    id: str
    route: str  # "HUMAN" | "LM"
    lm_label: str | None
    lm_confidence: float
    gain: float
    top_tags: list[tuple[str, float]]
    judge_order_inconsistent: bool
    human_cost: float
    expected_gain: float | None = None  # expected label corrections of a human label here (when computed)
    reason: str = ""  # one line: why it went where it went (the strategy's gain, its rank, the judge's doubt)
    replayed: bool = False  # campaign: the id was already stored and this is its stored decision (nothing spent)
    exploration: bool = False  # campaign: routed to humans by the campaign's random exploration share


@dataclass
class RouteResult:
    decisions: list[Decision]
    summary: dict = field(default_factory=dict)
    request_id: str = ""

    @property
    def warnings(self) -> list[str]:
        """The summary's warnings (out of domain, uncalibrated, judge unsure, ...): read them."""
        return list(self.summary.get("warnings", []))

    @property
    def campaign(self) -> dict | None:
        """With a campaign: {"name", "batch", "budget_spent", "budget_left", "replayed"} after this batch."""
        return self.summary.get("campaign")


def to_instances(items: Sequence[InstanceLike]) -> list[PreferenceInstance]:
    """``PreferenceInstance`` objects as they are, dicts through the JSONL schema; raises
    ``InvalidInput`` listing every bad row as ``instances[i].field`` before anything is sent."""
    out: list[PreferenceInstance] = []
    violations: list[FieldViolation] = []
    for i, item in enumerate(items):
        if isinstance(item, PreferenceInstance):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(instance_from_row(item, where=f"instances[{i}]"))
            except InvalidInput as exc:
                violations.extend(exc.violations)
        else:
            violations.append(
                FieldViolation(f"instances[{i}]", f"expected a PreferenceInstance or a dict, got {type(item).__name__}")
            )
    if violations:
        raise InvalidInput(violations)
    return out


def build_config(
    budget: Budget | Any,
    strategy: str = "",
    seed: int = 0,
    *,
    judge_mode: PositionMode = PositionMode.UNSPECIFIED,
    judge_template: str = "",
    replay_judge: str = "",
    explain_top_k: int = 3,
    simulated_candidates: int = 0,
    skip_invalid_instances: bool = False,
    campaign: str = "",
    batch: str = "",
) -> router_pb2.RouteConfig:
    """The ``RouteConfig`` of a call (``budget``: a ``Budget``, or anything ``resolve_budget`` reads; ``None``
    with a ``campaign``, whose total budget governs; ``batch``: the campaign batch's name).
    ``skip_invalid_instances``: route the valid instances and list the others in
    ``summary["rejected"]`` instead of refusing the whole batch."""
    config = router_pb2.RouteConfig(
        strategy=strategy,
        seed=seed,
        judge_position_mode=int(judge_mode),
        judge_template=judge_template,
        replay_judge=replay_judge,
        explain_top_k=explain_top_k,
        simulated_candidates=simulated_candidates,
        skip_invalid_instances=skip_invalid_instances,
        campaign=campaign,
        batch=batch,
    )
    if budget is not None:
        config.budget.CopyFrom((budget if isinstance(budget, Budget) else resolve_budget(budget)).to_proto())
    return config


def budget_proto(budget: Any) -> common_pb2.Budget:
    """Kept for callers of the 0.1 API: ``resolve_budget(budget).to_proto()``."""
    return (budget if isinstance(budget, Budget) else resolve_budget(budget)).to_proto()


def unary_request(instances: Sequence[PreferenceInstance], config: router_pb2.RouteConfig) -> router_pb2.RouteInstancesRequest:
    return router_pb2.RouteInstancesRequest(instances=instances_to_proto(instances), config=config)


def stream_requests(
    instances: Sequence[PreferenceInstance], config: router_pb2.RouteConfig, chunk_size: int, on_progress: Progress | None = None
) -> Iterator[router_pb2.RouteInstancesStreamRequest]:
    """The config, then the instances in chunks of ``chunk_size`` (converted one chunk at a time)."""
    if chunk_size < 1:
        raise InvalidInput(FieldViolation("chunk_size", f"must be >= 1, got {chunk_size}"))
    yield router_pb2.RouteInstancesStreamRequest(config=config)
    for start in range(0, len(instances), chunk_size):
        chunk = instances[start : start + chunk_size]
        yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=instances_to_proto(chunk)))
        if on_progress:
            on_progress("sent", len(chunk))


def result_from_response(resp: router_pb2.RouteInstancesResponse, request_id: str) -> RouteResult:
    return RouteResult([decision_from_proto(d) for d in resp.decisions], summary_to_dict(resp.summary), request_id)


class StreamCollector:
    """Reads ``RouteInstancesStream`` responses into a ``RouteResult``; ``received`` counts the result
    messages read, decisions and summary (a failure after the first one must not be retried)."""

    def __init__(self, request_id: str, on_progress: Progress | None = None):
        self.result = RouteResult([], {}, request_id)
        self.received = 0
        self._on_progress = on_progress
        self._done: dict[str, int] = {}  # per router stage: instances reported done so far

    def add(self, message: router_pb2.RouteInstancesStreamResponse) -> None:
        item = message.WhichOneof("item")
        if item == "progress":  # not a result: a failure after progress only may still be retried
            self._stage(message.progress)
            return
        self.received += 1
        if item == "decisions":
            batch = message.decisions.decisions
            self.result.decisions.extend(decision_from_proto(d) for d in batch)
            if self._on_progress:
                self._on_progress("received", len(batch))
        elif item == "summary":
            self.result.summary = summary_to_dict(message.summary)

    def _stage(self, progress: router_pb2.RouteProgress) -> None:
        """The router reports how many are done; the callback gets how many more (like the other phases)."""
        more = progress.done - self._done.get(progress.stage, 0)
        self._done[progress.stage] = progress.done
        if self._on_progress and more > 0:
            self._on_progress(progress.stage, more)


def decision_from_proto(d: router_pb2.RoutingDecision) -> Decision:
    return Decision(
        id=d.id,
        route=common_pb2.Route.Name(d.route).removeprefix("ROUTE_"),
        lm_label=Label(d.lm_label).name if d.lm_label else None,
        lm_confidence=d.lm_confidence,
        gain=d.gain,
        top_tags=[(t.tag, t.contribution) for t in d.top_tags],
        judge_order_inconsistent=d.judge_order_inconsistent,
        human_cost=d.human_cost,
        expected_gain=d.expected_gain if d.HasField("expected_gain") else None,
        reason=d.reason,
        replayed=d.replayed,
        exploration=d.exploration,
    )


def summary_to_dict(s: router_pb2.RoutingSummary) -> dict:
    out = {
        "strategy": s.strategy,
        "bundle_version": s.bundle_version,
        "human_count": s.human_count,
        "lm_count": s.lm_count,
        "human_cost": s.human_cost,
        "stage_seconds": dict(s.stage_seconds),
        "request_id": s.request_id,
        # which correction model routed the batch ("" when none was read) and its exact version
        "correction_model": s.correction_model,
        "correction_model_version": s.correction_model_version,
    }
    out.update(_honest_summary(s))
    # With skip_invalid_instances: the instances left out ({"index", "id", "field", "description"} per problem).
    out["rejected"] = [{"index": r.index, "id": r.id, "field": r.field, "description": r.description} for r in s.rejected]
    out["rejected_count"] = s.rejected_count
    if s.HasField("campaign"):
        c = s.campaign
        out["campaign"] = {
            "name": c.name,
            "batch": c.batch,
            "budget_spent": c.budget_spent,
            "budget_left": c.budget_left,
            "replayed": c.replayed,
        }
        if c.HasField("expected_changes"):
            out["campaign"]["expected_changes"] = _estimate(c.expected_changes)
        if c.HasField("model"):
            out["campaign"]["model"] = campaign_model_from_proto(c.model)
    return out


def _estimate(e) -> dict:
    return {"value": e.value, "low": e.low, "high": e.high}


def _honest_summary(s: router_pb2.RoutingSummary) -> dict:
    """Predictions with their intervals, the domain check and the warnings.

    ``mixes``: {"chosen" | "all_human" | "all_lm" | "random": {"human_count", "predicted_score"
    ({"value", "low", "high"} or absent, then "score_note" says why), "expected_corrections"
    (same shape, absent without a correction model)}}; ``interval_level``; ``domain`` ({"distance",
    "threshold", "in_domain", "nearest_pool", "distance_kind"}, absent without domain statistics);
    ``warnings``: list of sentences.
    """
    mixes = {}
    for m in s.mixes:
        entry: dict = {"human_count": m.human_count}
        if m.HasField("predicted_score"):
            entry["predicted_score"] = _estimate(m.predicted_score)
        else:
            entry["score_note"] = m.score_note
        if m.HasField("expected_corrections"):
            entry["expected_corrections"] = _estimate(m.expected_corrections)
        mixes[m.mix] = entry
    out: dict = {"mixes": mixes, "interval_level": s.interval_level, "warnings": list(s.warnings)}
    if s.HasField("domain"):
        d = s.domain
        out["domain"] = {
            "distance": d.distance,
            "threshold": d.threshold,
            "in_domain": d.in_domain,
            "nearest_pool": d.nearest_pool,
            "distance_kind": d.distance_kind,
        }
    return out


# ---- campaigns (CampaignService) ------------------------------------------------------------------------

Preference = Literal["A", "B", "tie"]
_PREFERENCES = {
    "A": campaign_pb2.HUMAN_PREFERENCE_A,
    "B": campaign_pb2.HUMAN_PREFERENCE_B,
    "tie": campaign_pb2.HUMAN_PREFERENCE_TIE,
}
_STATUS_NAMES = {
    campaign_pb2.LABEL_STATUS_STORED: "stored",
    campaign_pb2.LABEL_STATUS_UNCHANGED: "unchanged",
    campaign_pb2.LABEL_STATUS_REPLACED: "replaced",
    campaign_pb2.LABEL_STATUS_REJECTED: "rejected",
}
EXPORT_FORMATS = {
    "trl": campaign_pb2.EXPORT_FORMAT_TRL,
    "trl-chat": campaign_pb2.EXPORT_FORMAT_TRL_CHAT,
    "pool": campaign_pb2.EXPORT_FORMAT_POOL,
}
MAX_LABELS_PER_CALL = 5000  # the SDK sends labels in calls of at most this many (the router's limit is larger)


@dataclass(frozen=True)
class HumanLabel:
    """One human label for a routed instance: ``label`` "A" / "B" / "tie" in the orientation the pair was
    routed in; ``strength`` 1 (slightly) or 2 (clearly), ``None`` when unknown (never for a tie);
    ``labelled_at`` ``None`` = when it is stored."""

    id: str
    annotator: str
    label: Preference
    strength: int | None = None
    rationale: str = ""
    labelled_at: datetime | None = None


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95% interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Campaign:
    """A campaign: its settings and counters. ``budget_kind`` "count" (human labels) or "cost" (cost units)."""

    name: str
    budget_kind: str
    budget_total: float
    strategy: str
    judge: str
    votes_per_pair: int
    expected_instances: int | None
    exploration_share: float
    created_at: datetime
    budget_spent: float
    budget_left: float
    routed: int
    human_routed: int
    labels_returned: int
    pairs_pending: int
    closed_at: datetime | None = None  # closed: no new instance is routed for it


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's votes: ``with_others``, agreement with the other votes' majority on the same pairs
    (leave-one-out), ``with_lm``, with the LM label; Wilson 95% intervals, ``None`` without a comparison."""

    annotator: str
    votes: int
    with_others: Interval | None
    with_lm: Interval | None


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign and what its returned labels show: ``agreement`` (judge-human, Wilson 95%, over labelled
    pairs where neither the human majority nor the LM label is a tie), ``audit_agreement`` (the same over
    LM-routed pairs only), corrections realised and the net corrections the routing promised, and the
    like-for-like check of the routing model: ``realised_changes`` (human majorities that differ from the
    LM label) against ``expected_changes`` (the sum of P(LM wrong), 95% interval) over ``changes_known``
    pairs."""

    campaign: Campaign
    labels_pending: int
    agreement: Interval | None
    audit_agreement: Interval | None
    realised_corrections: int
    expected_corrections: Interval | None
    expected_known: int
    # the correction model that routes the next batch (campaign_model_from_proto); None without a panel model
    model: dict | None = None
    realised_changes: int = 0
    expected_changes: Interval | None = None
    changes_known: int = 0
    annotators: list[AnnotatorStats] = field(default_factory=list)  # most votes first


@dataclass(frozen=True)
class PendingPair:
    """A human-routed pair that still needs votes (``ListPendingPairs``): what an annotation tool labels."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    votes: int
    votes_needed: int


def pending_pairs_request(campaign: str, annotator: str, page_size: int, page_token: str) -> campaign_pb2.ListPendingPairsRequest:
    if not 1 <= page_size <= 1000:
        raise InvalidInput(FieldViolation("page_size", f"must be in 1..1000, got {page_size}"))
    return campaign_pb2.ListPendingPairsRequest(
        campaign=campaign, annotator=annotator, page_size=page_size, page_token=page_token
    )


def pending_pairs_from_proto(response: campaign_pb2.ListPendingPairsResponse) -> list[PendingPair]:
    return [PendingPair(p.id, p.prompt, p.response_a, p.response_b, p.votes, p.votes_needed) for p in response.pairs]


@dataclass(frozen=True)
class LabelResult:
    """What happened to one submitted label: ``status`` "stored" | "unchanged" | "replaced" | "rejected";
    ``audit``: a label on an LM-routed instance (kept; it measures the judge); ``error``: why it was rejected."""

    index: int
    id: str
    status: str
    audit: bool = False
    error: str = ""


def campaign_budget(
    budget: str | None = None, *, count: int | None = None, cost: float | None = None
) -> campaign_pb2.CampaignBudget:
    """A campaign's total budget: ``count=N`` (human labels), ``cost=X`` (cost units) or the CLI's
    ``"count:N"`` / ``"cost:X"``. Raises ``InvalidInput`` naming ``budget``."""
    given = [name for name, value in (("budget", budget), ("count", count), ("cost", cost)) if value is not None]
    if len(given) != 1:
        raise InvalidInput(
            FieldViolation(
                "budget", f"give exactly one of count=, cost= or budget='count:N'|'cost:X' (got {', '.join(given) or 'none'})"
            )
        )
    if budget is not None:
        kind, _, value = str(budget).strip().lower().partition(":")
        try:
            if kind == "count":
                count = int(value)
            elif kind == "cost":
                cost = float(value)
            else:
                raise ValueError
        except ValueError:
            raise InvalidInput(
                FieldViolation("budget", f"cannot read {budget!r}; use count:N (human labels) or cost:X (cost units)")
            ) from None
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(FieldViolation("budget.count", f"must be a whole number >= 0, got {count!r}"))
        return campaign_pb2.CampaignBudget(count=count)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        raise InvalidInput(FieldViolation("budget.cost", f"must be a finite number >= 0, got {cost!r}"))
    return campaign_pb2.CampaignBudget(cost=float(cost))


def retract_request(campaign: str, annotator: str, ids: Iterable[str] | None) -> campaign_pb2.RetractLabelsRequest | None:
    """A ``RetractLabels`` request: ``ids=None`` = every label of the annotator; ``None`` (nothing to send) for an
    empty list, which the RPC would read as "all"."""
    if isinstance(ids, str):
        raise InvalidInput(FieldViolation("ids", "expected a list of instance ids, got one string"))
    listed = None if ids is None else list(ids)
    if listed is not None and not listed:
        return None
    return campaign_pb2.RetractLabelsRequest(campaign=campaign, annotator=annotator, ids=listed or [])


def update_campaign_request(
    name: str,
    budget: str | None = None,
    *,
    count: int | None = None,
    cost: float | None = None,
    expected_instances: int | None = None,
) -> campaign_pb2.UpdateCampaignRequest:
    """An ``UpdateCampaign`` request: a new total (``count=``, ``cost=`` or ``budget="count:N"|"cost:X"``, in the
    campaign's unit) and / or a new ``expected_instances``; at least one. Raises ``InvalidInput``."""
    request = campaign_pb2.UpdateCampaignRequest(name=name)
    if budget is not None or count is not None or cost is not None:
        request.budget.CopyFrom(campaign_budget(budget, count=count, cost=cost))
    if expected_instances is not None:
        if not isinstance(expected_instances, int) or isinstance(expected_instances, bool) or expected_instances < 1:
            raise InvalidInput(FieldViolation("expected_instances", f"must be a whole number >= 1, got {expected_instances!r}"))
        request.expected_instances = expected_instances
    if not request.HasField("budget") and not request.HasField("expected_instances"):
        raise InvalidInput(FieldViolation("budget", "nothing to change: give a budget and / or expected_instances"))
    return request


def create_campaign_request(
    name: str,
    budget: campaign_pb2.CampaignBudget,
    *,
    strategy: str = "",
    judge: str = "",
    votes_per_pair: int = 1,
    expected_instances: int | None = None,
    exploration_share: float = 0.0,
) -> campaign_pb2.CreateCampaignRequest:
    violations = []
    if not isinstance(votes_per_pair, int) or isinstance(votes_per_pair, bool) or votes_per_pair < 1:
        violations.append(FieldViolation("votes_per_pair", f"must be a whole number >= 1, got {votes_per_pair!r}"))
    if expected_instances is not None and (not isinstance(expected_instances, int) or expected_instances < 1):
        violations.append(FieldViolation("expected_instances", f"must be a whole number >= 1, got {expected_instances!r}"))
    if not isinstance(exploration_share, (int, float)) or not 0 <= exploration_share <= 1:
        violations.append(FieldViolation("exploration_share", f"must be in [0, 1], got {exploration_share!r}"))
    if violations:
        raise InvalidInput(violations)
    settings = campaign_pb2.CampaignSettings(
        name=name,
        budget=budget,
        strategy=strategy,
        judge=judge,
        votes_per_pair=votes_per_pair,
        exploration_share=float(exploration_share),
    )
    if expected_instances is not None:
        settings.expected_instances = expected_instances
    return campaign_pb2.CreateCampaignRequest(settings=settings)


LabelLike = HumanLabel | Mapping[str, Any]


def label_from_row(row: Mapping[str, Any], where: str = "labels[0]") -> HumanLabel:
    """A ``HumanLabel`` from a JSON row ``{"id", "label": "A"|"B"|"tie", "annotator", optional "strength"
    (1 or 2), "rationale", "labelled_at" (ISO 8601)}``; raises ``InvalidInput`` naming ``<where>.<field>``
    for every bad field. What the server checks besides: that the id was routed in the campaign."""
    v: list[FieldViolation] = []
    if not isinstance(row, Mapping):
        raise InvalidInput(FieldViolation(where, f"expected a JSON object, got {type(row).__name__}"))
    unknown = sorted(set(row) - {"id", "label", "annotator", "strength", "rationale", "labelled_at"})
    if unknown:
        v.append(
            FieldViolation(
                f"{where}.{unknown[0]}", "unknown field; expected id, label, annotator, strength, rationale, labelled_at"
            )
        )
    for name in ("id", "annotator"):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            v.append(FieldViolation(f"{where}.{name}", "required: a non-empty string"))
    label = row.get("label")
    canonical = {"a": "A", "b": "B", "tie": "tie"}.get(label.strip().lower()) if isinstance(label, str) else None
    if canonical is None:
        v.append(FieldViolation(f"{where}.label", f'expected "A", "B" or "tie", got {label!r}'))
    strength = row.get("strength")
    if strength is not None and (isinstance(strength, bool) or strength not in (1, 2)):
        v.append(FieldViolation(f"{where}.strength", f"expected 1 (slightly) or 2 (clearly), got {strength!r}"))
    elif strength is not None and canonical == "tie":
        v.append(FieldViolation(f"{where}.strength", "a tie has no strength"))
    rationale = row.get("rationale", "")
    if rationale is None:
        rationale = ""
    if not isinstance(rationale, str):
        v.append(FieldViolation(f"{where}.rationale", "expected a string"))
    labelled_at = row.get("labelled_at")
    when = None
    if labelled_at is not None:
        try:
            when = datetime.fromisoformat(str(labelled_at).replace("Z", "+00:00"))
        except ValueError:
            v.append(FieldViolation(f"{where}.labelled_at", f"expected an ISO 8601 time, got {labelled_at!r}"))
    if v:
        raise InvalidInput(v)
    return HumanLabel(
        id=row["id"],
        annotator=row["annotator"],
        label=canonical,
        strength=strength,  # type: ignore[arg-type]
        rationale=rationale,
        labelled_at=when,
    )


def to_labels(items: Iterable[LabelLike]) -> list[HumanLabel]:
    """``HumanLabel`` objects as they are, dicts through :func:`label_from_row`; ``InvalidInput`` lists every
    bad item as ``labels[i].field`` before anything is sent."""
    out: list[HumanLabel] = []
    violations: list[FieldViolation] = []
    for i, item in enumerate(items):
        if isinstance(item, HumanLabel):
            out.append(item)
            continue
        try:
            out.append(label_from_row(item, where=f"labels[{i}]"))
        except InvalidInput as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidInput(violations)
    return out


def submit_labels_requests(
    campaign: str, labels: Sequence[HumanLabel], chunk: int = MAX_LABELS_PER_CALL, source: str = ""
) -> Iterator[campaign_pb2.SubmitLabelsRequest]:
    """The labels in requests of at most ``chunk`` (``source``: where they come from, "" = the API)."""
    for start in range(0, len(labels), chunk):
        part = [_label_proto(x) for x in labels[start : start + chunk]]
        yield campaign_pb2.SubmitLabelsRequest(campaign=campaign, labels=part, source=source)


def _label_proto(x: HumanLabel) -> campaign_pb2.HumanLabel:
    out = campaign_pb2.HumanLabel(id=x.id, annotator=x.annotator, label=_PREFERENCES.get(x.label, 0), rationale=x.rationale)
    if x.strength is not None:
        out.strength = x.strength
    if x.labelled_at is not None:
        when = x.labelled_at if x.labelled_at.tzinfo else x.labelled_at.replace(tzinfo=UTC)
        out.labelled_at.FromDatetime(when.astimezone(UTC))
    return out


def label_results(response: campaign_pb2.SubmitLabelsResponse, offset: int = 0) -> list[LabelResult]:
    """The response's results, ``index`` counted from ``offset`` (the request's first label in the whole call)."""
    return [
        LabelResult(offset + r.index, r.id, _STATUS_NAMES.get(r.status, "rejected"), r.audit, r.error) for r in response.results
    ]


def export_request(campaign: str, fmt: str) -> campaign_pb2.ExportDatasetRequest:
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(FieldViolation("format", f"expected trl, trl-chat or pool, got {fmt!r}"))
    return campaign_pb2.ExportDatasetRequest(campaign=campaign, format=EXPORT_FORMATS[fmt])


def export_rows(response: campaign_pb2.ExportDatasetResponse, fmt: str = "trl") -> Iterator[dict[str, Any]]:
    """The rows of one ``ExportDataset`` message as dicts, in the schema the store's JSONL export writes
    (``trl``: id, prompt, chosen, rejected, label_source, judge, confidence, votes, tie, campaign, batch,
    human_routed; ``trl-chat``: the same with prompt a list of {role, content} turns and chosen / rejected
    one assistant turn each, TRL's conversational form; ``pool``: the pool schema; see docs/campaigns.md)."""
    chat = fmt == "trl-chat"
    for r in response.trl_rows:
        yield {
            "id": r.id,
            "prompt": [{"role": m.role, "content": m.content} for m in r.prompt_messages] if chat else r.prompt,
            "chosen": [{"role": "assistant", "content": r.chosen}] if chat else r.chosen,
            "rejected": [{"role": "assistant", "content": r.rejected}] if chat else r.rejected,
            "label_source": r.label_source,
            "judge": r.judge,
            "confidence": r.confidence if r.HasField("confidence") else None,
            "votes": r.votes,
            "tie": r.tie,
            "campaign": r.campaign,
            "batch": r.batch,
            "human_routed": r.human_routed,
        }
    for p in response.pool_rows:
        yield {
            "id": p.id,
            "source": p.source,
            "prompt": p.prompt,
            "response_a": p.response_a,
            "response_b": p.response_b,
            "human_label": p.human_label,
            "human_votes": list(p.human_votes),
            "lm_labels": dict(p.lm_labels),
            "campaign": p.campaign,
            "batch": p.batch,
            "human_routed": p.human_routed,
            "exploration": p.exploration,
            "score": p.score,
            "expected_correction": p.expected_correction if p.HasField("expected_correction") else None,
        }


def campaign_from_proto(c: campaign_pb2.Campaign) -> Campaign:
    s = c.settings
    kind = s.budget.WhichOneof("kind") or "count"
    return Campaign(
        name=s.name,
        budget_kind=kind,
        budget_total=float(getattr(s.budget, kind)),
        strategy=s.strategy,
        judge=s.judge,
        votes_per_pair=s.votes_per_pair,
        expected_instances=s.expected_instances if s.HasField("expected_instances") else None,
        exploration_share=s.exploration_share,
        created_at=c.created_at.ToDatetime(tzinfo=UTC),
        budget_spent=c.budget_spent,
        budget_left=c.budget_left,
        routed=c.routed,
        human_routed=c.human_routed,
        labels_returned=c.labels_returned,
        pairs_pending=c.pairs_pending,
        closed_at=c.closed_at.ToDatetime(tzinfo=UTC) if c.HasField("closed_at") else None,
    )


def campaign_model_from_proto(m) -> dict:
    """``CampaignModelInfo`` -> {"version", "base_version", "adapted", "labels", "heldout_log_loss",
    "bundle_log_loss", "human_error_rate"} (None where unset)."""
    return {
        "version": m.version,
        "base_version": m.base_version,
        "adapted": m.adapted,
        "labels": m.labels,
        **{f: (getattr(m, f) if m.HasField(f) else None) for f in ("heldout_log_loss", "bundle_log_loss", "human_error_rate")},
    }


def status_from_proto(resp: campaign_pb2.GetCampaignResponse) -> CampaignStatus:
    s = resp.status

    def interval(name: str) -> Interval | None:
        if not s.HasField(name):
            return None
        value = getattr(s, name)
        return Interval(value.estimate, value.low, value.high)

    return CampaignStatus(
        campaign=campaign_from_proto(resp.campaign),
        labels_pending=s.labels_pending,
        agreement=interval("agreement"),
        audit_agreement=interval("audit_agreement"),
        realised_corrections=s.realised_corrections,
        expected_corrections=interval("expected_corrections"),
        expected_known=s.expected_known,
        model=campaign_model_from_proto(resp.model) if resp.HasField("model") else None,
        realised_changes=s.realised_changes,
        expected_changes=interval("expected_changes"),
        changes_known=s.changes_known,
        annotators=[_annotator_from_proto(a) for a in resp.annotators],
    )


def _annotator_from_proto(a: campaign_pb2.AnnotatorStats) -> AnnotatorStats:
    def interval(name: str) -> Interval | None:
        value = getattr(a, name)
        return Interval(value.estimate, value.low, value.high) if a.HasField(name) else None

    return AnnotatorStats(a.annotator, a.votes, interval("with_others"), interval("with_lm"))
