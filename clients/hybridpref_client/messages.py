"""What the sync and async clients send and read, built in one place so the two cannot drift:
instances (``PreferenceInstance`` objects or plain dicts) -> request messages, and response messages
-> ``RouteResult`` (decisions and the summary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from hybridpref_client.budget import Budget, resolve_budget
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, instance_from_row
from hybridpref.v1 import common_pb2, router_pb2

STREAM_CHUNK = 500

# One input row: a PreferenceInstance, or a dict in the JSONL schema (id, prompt or messages,
# response_a, response_b, optional metadata, human_label, lm_labels, human_cost).
InstanceLike = Union[PreferenceInstance, Mapping[str, Any]]
# on_progress(phase, n): ("sent", k) per chunk sent, ("received", k) per decision chunk received,
# ("retry", attempt) before a retry (the counts then start again).
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


@dataclass
class RouteResult:
    decisions: list[Decision]
    summary: dict = field(default_factory=dict)
    request_id: str = ""

    @property
    def warnings(self) -> list[str]:
        """The summary's warnings (out of domain, uncalibrated, judge unsure, ...): read them."""
        return list(self.summary.get("warnings", []))


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
            violations.append(FieldViolation(f"instances[{i}]", f"expected a PreferenceInstance or a dict, got {type(item).__name__}"))
    if violations:
        raise InvalidInput(violations)
    return out


def build_config(
    budget: Budget | Any, strategy: str = "", seed: int = 0, *, judge_mode: PositionMode = PositionMode.UNSPECIFIED,
    judge_template: str = "", replay_judge: str = "", explain_top_k: int = 3, simulated_candidates: int = 0,
) -> router_pb2.RouteConfig:
    """The ``RouteConfig`` of a call (``budget``: a ``Budget``, or anything ``resolve_budget`` reads)."""
    resolved = budget if isinstance(budget, Budget) else resolve_budget(budget)
    return router_pb2.RouteConfig(
        budget=resolved.to_proto(), strategy=strategy, seed=seed, judge_position_mode=int(judge_mode),
        judge_template=judge_template, replay_judge=replay_judge, explain_top_k=explain_top_k,
        simulated_candidates=simulated_candidates,
    )


def budget_proto(budget: Any) -> common_pb2.Budget:
    """Kept for callers of the 0.1 API: ``resolve_budget(budget).to_proto()``."""
    return (budget if isinstance(budget, Budget) else resolve_budget(budget)).to_proto()


def unary_request(instances: Sequence[PreferenceInstance], config: router_pb2.RouteConfig) -> router_pb2.RouteInstancesRequest:
    return router_pb2.RouteInstancesRequest(instances=instances_to_proto(instances), config=config)


def stream_requests(instances: Sequence[PreferenceInstance], config: router_pb2.RouteConfig, chunk_size: int,
                    on_progress: Progress | None = None) -> Iterator[router_pb2.RouteInstancesStreamRequest]:
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
    """Reads ``RouteInstancesStream`` responses into a ``RouteResult``; ``received`` counts the
    messages read (a failure after the first one must not be retried)."""

    def __init__(self, request_id: str, on_progress: Progress | None = None):
        self.result = RouteResult([], {}, request_id)
        self.received = 0
        self._on_progress = on_progress

    def add(self, message: router_pb2.RouteInstancesStreamResponse) -> None:
        self.received += 1
        if message.WhichOneof("item") == "decisions":
            batch = message.decisions.decisions
            self.result.decisions.extend(decision_from_proto(d) for d in batch)
            if self._on_progress:
                self._on_progress("received", len(batch))
        else:
            self.result.summary = summary_to_dict(message.summary)


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
    )


def summary_to_dict(s: router_pb2.RoutingSummary) -> dict:
    out = {
        "strategy": s.strategy, "bundle_version": s.bundle_version, "human_count": s.human_count,
        "lm_count": s.lm_count, "human_cost": s.human_cost, "stage_seconds": dict(s.stage_seconds),
        "request_id": s.request_id,
        # which correction model routed the batch ("" when none was read) and its exact version
        "correction_model": s.correction_model, "correction_model_version": s.correction_model_version,
    }
    out.update(_honest_summary(s))
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
        out["domain"] = {"distance": d.distance, "threshold": d.threshold, "in_domain": d.in_domain,
                         "nearest_pool": d.nearest_pool, "distance_kind": d.distance_kind}
    return out
