"""Sync and asyncio clients for ``RouteInstances`` with deadlines, request ids, TLS, API keys
and retries of ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED`` (gRPC's own retry policy, with backoff)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.grpc_errors import field_violations, retry_delay_s
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
STREAM_CHUNK = 500
DEFAULT_MAX_ATTEMPTS = 4
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


@dataclass(frozen=True)
class ChannelConfig:
    """How a client connects: TLS, API key, retries, message size.

    ``tls``: use TLS (implied by ``root_certificates`` or a client certificate); ``root_certificates``
    is the PEM of the CA to trust (None = the system roots); ``certificate_chain`` + ``private_key``
    present a client certificate (mutual TLS). ``api_key`` is sent as ``authorization: Bearer <key>``.
    ``max_attempts`` > 1 retries ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED`` with exponential backoff
    (gRPC retries a call only while no response has arrived, so nothing is routed twice).
    """

    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    api_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        if not 1 <= self.max_attempts <= 5:  # gRPC caps retry attempts at 5
            raise ValueError("max_attempts must be in 1..5")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")

    @property
    def secure(self) -> bool:
        return self.tls or self.root_certificates is not None or self.certificate_chain is not None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def service_config(self) -> str:
        method: dict = {"name": [{"service": ROUTER_SERVICE}]}
        if self.max_attempts > 1:
            method["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            }
        return json.dumps({"methodConfig": [method]})

    def options(self) -> list[tuple[str, int | str]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", int(self.max_attempts > 1)),
            ("grpc.service_config", self.service_config()),
        ]

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        out = (("x-request-id", request_id),)
        return out + ((("authorization", f"Bearer {self.api_key.strip()}"),) if self.api_key else ())


def _config(config: ChannelConfig | None, max_message_bytes: int, options: dict) -> ChannelConfig:
    if config is not None and options:
        raise TypeError("pass either config= or individual channel options, not both")
    return config or ChannelConfig(max_message_bytes=max_message_bytes, **options)


@dataclass(frozen=True)
class Cost:
    """A cost budget: the total human cost to spend."""

    total: float


Budget = float | int | Cost | str


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


class RoutingError(Exception):
    """A failed call: ``code`` (grpc.StatusCode), message, field violations, retry hint."""

    def __init__(self, error: grpc.RpcError):
        self.code = error.code()
        self.details = error.details() or ""
        self.violations = field_violations(error)
        self.retry_after_s = retry_delay_s(error)
        super().__init__(f"{self.code.name}: {self.details}")


def budget_proto(budget: Budget) -> common_pb2.Budget:
    if isinstance(budget, Cost):
        return common_pb2.Budget(cost=budget.total)
    if isinstance(budget, str):
        if budget != "auto":
            raise ValueError(f"budget string must be 'auto', got {budget!r}")
        return common_pb2.Budget(auto=True)
    if isinstance(budget, bool):
        raise ValueError("budget must be a fraction, a count, Cost(...) or 'auto'")
    if isinstance(budget, int):
        return common_pb2.Budget(count=budget)
    return common_pb2.Budget(fraction=float(budget))


def build_config(
    budget: Budget, strategy: str = "", seed: int = 0, *, judge_mode: PositionMode = PositionMode.UNSPECIFIED,
    judge_template: str = "", replay_judge: str = "", explain_top_k: int = 3, simulated_candidates: int = 0,
) -> router_pb2.RouteConfig:
    return router_pb2.RouteConfig(
        budget=budget_proto(budget), strategy=strategy, seed=seed, judge_position_mode=int(judge_mode),
        judge_template=judge_template, replay_judge=replay_judge, explain_top_k=explain_top_k,
        simulated_candidates=simulated_candidates,
    )


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


def _chunks(instances: Sequence[PreferenceInstance], size: int) -> Iterator[Sequence[PreferenceInstance]]:
    for start in range(0, len(instances), size):
        yield instances[start : start + size]


class RouterClient:
    """Blocking client. ``timeout_s`` is the per-call deadline (propagated downstream).

    Channel options (see ``ChannelConfig``) as keywords, e.g.
    ``RouterClient(address, api_key=key, root_certificates=ca_pem)``, or ``config=ChannelConfig(...)``.
    """

    def __init__(self, address: str, timeout_s: float | None = 300.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 *, config: ChannelConfig | None = None, **channel_options):
        self.config = _config(config, max_message_bytes, channel_options)
        if self.config.secure:
            self._channel = grpc.secure_channel(address, self.config.credentials(), options=self.config.options())
        else:
            self._channel = grpc.insecure_channel(address, options=self.config.options())
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self.timeout_s = timeout_s

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def route(self, instances: Sequence[PreferenceInstance], budget: Budget, strategy: str = "", seed: int = 0,
              *, request_id: str | None = None, **options) -> RouteResult:
        """Route one batch with ``RouteInstances`` (up to the server's batch limit)."""
        rid = request_id or uuid.uuid4().hex
        request = router_pb2.RouteInstancesRequest(
            instances=instances_to_proto(instances), config=build_config(budget, strategy, seed, **options)
        )
        try:
            resp = self._stub.RouteInstances(request, timeout=self.timeout_s, metadata=self.config.metadata(rid))
        except grpc.RpcError as exc:
            raise RoutingError(exc) from None
        return RouteResult([decision_from_proto(d) for d in resp.decisions], summary_to_dict(resp.summary), rid)

    def route_stream(self, instances: Sequence[PreferenceInstance], budget: Budget, strategy: str = "", seed: int = 0,
                     *, request_id: str | None = None, chunk_size: int = STREAM_CHUNK,
                     on_progress: Callable[[str, int], None] | None = None, **options) -> RouteResult:
        """Route a batch of any size with ``RouteInstancesStream``.

        ``on_progress(phase, n)`` is called with ("sent", k) per chunk sent and
        ("received", k) per decision chunk received.
        """
        rid = request_id or uuid.uuid4().hex
        config = build_config(budget, strategy, seed, **options)

        def requests() -> Iterator[router_pb2.RouteInstancesStreamRequest]:
            yield router_pb2.RouteInstancesStreamRequest(config=config)
            for chunk in _chunks(instances, chunk_size):
                yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=instances_to_proto(chunk)))
                if on_progress:
                    on_progress("sent", len(chunk))

        result = RouteResult([], {}, rid)
        try:
            for message in self._stub.RouteInstancesStream(requests(), timeout=self.timeout_s, metadata=self.config.metadata(rid)):
                if message.WhichOneof("item") == "decisions":
                    result.decisions.extend(decision_from_proto(d) for d in message.decisions.decisions)
                    if on_progress:
                        on_progress("received", len(message.decisions.decisions))
                else:
                    result.summary = summary_to_dict(message.summary)
        except grpc.RpcError as exc:
            raise RoutingError(exc) from None
        return result


class AsyncRouterClient:
    """asyncio client with the same API and channel options as ``RouterClient``."""

    def __init__(self, address: str, timeout_s: float | None = 300.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 *, config: ChannelConfig | None = None, **channel_options):
        self.config = _config(config, max_message_bytes, channel_options)
        if self.config.secure:
            self._channel = grpc.aio.secure_channel(address, self.config.credentials(), options=self.config.options())
        else:
            self._channel = grpc.aio.insecure_channel(address, options=self.config.options())
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def route(self, instances: Sequence[PreferenceInstance], budget: Budget, strategy: str = "", seed: int = 0,
                    *, request_id: str | None = None, **options) -> RouteResult:
        rid = request_id or uuid.uuid4().hex
        request = router_pb2.RouteInstancesRequest(
            instances=instances_to_proto(instances), config=build_config(budget, strategy, seed, **options)
        )
        try:
            resp = await self._stub.RouteInstances(request, timeout=self.timeout_s, metadata=self.config.metadata(rid))
        except grpc.RpcError as exc:
            raise RoutingError(exc) from None
        return RouteResult([decision_from_proto(d) for d in resp.decisions], summary_to_dict(resp.summary), rid)

    async def route_stream(self, instances: Sequence[PreferenceInstance], budget: Budget, strategy: str = "",
                           seed: int = 0, *, request_id: str | None = None, chunk_size: int = STREAM_CHUNK,
                           **options) -> RouteResult:
        rid = request_id or uuid.uuid4().hex
        config = build_config(budget, strategy, seed, **options)

        async def requests() -> AsyncIterator[router_pb2.RouteInstancesStreamRequest]:
            yield router_pb2.RouteInstancesStreamRequest(config=config)
            for chunk in _chunks(instances, chunk_size):
                yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=instances_to_proto(chunk)))

        result = RouteResult([], {}, rid)
        try:
            async for message in self._stub.RouteInstancesStream(requests(), timeout=self.timeout_s, metadata=self.config.metadata(rid)):
                if message.WhichOneof("item") == "decisions":
                    result.decisions.extend(decision_from_proto(d) for d in message.decisions.decisions)
                else:
                    result.summary = summary_to_dict(message.summary)
        except grpc.RpcError as exc:
            raise RoutingError(exc) from None
        return result
