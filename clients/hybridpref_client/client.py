"""Sync and asyncio clients for ``RouteInstances`` / ``RouteInstancesStream`` and the campaign calls
(``CampaignService``, served by the router on the same port): deadlines, request ids, TLS, API keys and
retries (``hybridpref_client.retry``: ``UNAVAILABLE``, and quota refusals after the server's ``RetryInfo``;
every campaign call is safe to retry: a re-sent label or routed id is stored once).

Both clients take the same arguments and build their messages with ``hybridpref_client.messages``;
they differ only in how they wait.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from hybridpref.v1 import campaign_pb2, campaign_pb2_grpc, router_pb2, router_pb2_grpc
from hybridpref_client.budget import Budget, Cost, resolve_budget
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.errors import RoutingError, routing_error
from hybridpref_client.messages import (
    STREAM_CHUNK,
    Campaign,
    CampaignStatus,
    Decision,
    InstanceLike,
    LabelLike,
    LabelResult,
    PendingPair,
    Progress,
    RouteResult,
    StreamCollector,
    budget_proto,
    build_config,
    campaign_budget,
    campaign_from_proto,
    create_campaign_request,
    decision_from_proto,
    export_request,
    export_rows,
    label_results,
    pending_pairs_from_proto,
    pending_pairs_request,
    result_from_response,
    retract_request,
    status_from_proto,
    stream_requests,
    submit_labels_requests,
    summary_to_dict,
    to_instances,
    to_labels,
    unary_request,
    update_campaign_request,
)
from hybridpref_client.retry import Retrier, RetryPolicy

# Names of the 0.1 API, importable from here as before.
__all__ = [
    "AsyncRouterClient",
    "Budget",
    "ChannelConfig",
    "Cost",
    "Decision",
    "RouteResult",
    "RouterClient",
    "RoutingError",
    "budget_proto",
    "build_config",
    "decision_from_proto",
    "summary_to_dict",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 4
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


@dataclass(frozen=True)
class ChannelConfig:
    """How a client connects: TLS, API key, retries, message size.

    ``tls``: use TLS (implied by ``root_certificates`` or a client certificate); ``root_certificates``
    is the PEM of the CA to trust (None = the system roots); ``certificate_chain`` + ``private_key``
    present a client certificate (mutual TLS). ``api_key`` is sent as ``authorization: Bearer <key>``.
    Retries (``hybridpref_client.retry``): up to ``max_attempts`` attempts, full-jitter exponential
    backoff from ``initial_backoff_s`` to ``max_backoff_s`` added to the server's ``RetryInfo``, at
    most ``max_retry_wait_s`` seconds of waiting per call; ``retry_seed`` makes the jitter reproducible.
    """

    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    api_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_wait_s: float = 60.0
    retry_seed: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")
        self.retry_policy()  # validates the retry settings (ValueError)

    @property
    def secure(self) -> bool:
        return self.tls or self.root_certificates is not None or self.certificate_chain is not None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.initial_backoff_s, self.max_backoff_s, self.max_retry_wait_s, self.retry_seed)

    def options(self) -> list[tuple[str, int | str]]:
        # No gRPC retry policy: the SDK retries itself (see hybridpref_client.retry). gRPC's
        # transparent retries (a call that never left the client) stay on.
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        out = (("x-request-id", request_id),)
        return out + ((("authorization", f"Bearer {self.api_key.strip()}"),) if self.api_key else ())


def _config(config: ChannelConfig | None, max_message_bytes: int, options: dict) -> ChannelConfig:
    if config is not None and options:
        raise TypeError("pass either config= or individual channel options, not both")
    return config or ChannelConfig(max_message_bytes=max_message_bytes, **options)


@dataclass(frozen=True)
class _Call:
    """One routing call, checked and built before anything is sent (retries reuse it)."""

    instances: list
    config: router_pb2.RouteConfig
    request_id: str
    metadata: tuple[tuple[str, str], ...]
    deadline: float | None  # time.monotonic() at which the whole call (every attempt) ends

    def timeout(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())


class _Client:
    """What the sync and async clients share: configuration and building a call."""

    def __init__(self, timeout_s: float | None, max_message_bytes: int, config: ChannelConfig | None, options: dict):
        self.config = _config(config, max_message_bytes, options)
        self.timeout_s = timeout_s
        self._retrier = Retrier(self.config.retry_policy())

    def _call(
        self,
        instances: Sequence[InstanceLike],
        budget,
        strategy: str,
        seed: int,
        fraction,
        count,
        cost,
        request_id: str | None,
        options: dict,
    ) -> _Call:
        given = [b for b in (budget, fraction, count, cost) if b is not None]
        if options.get("campaign"):
            if given:
                raise InvalidInput(
                    FieldViolation(
                        "budget", "leave the budget out when routing for a campaign: the campaign's total budget governs"
                    )
                )
            resolved = None
        else:
            # stacklevel 3: resolve_budget <- _call <- route / route_stream <- the caller's line
            resolved = resolve_budget(budget, fraction=fraction, count=count, cost=cost, stacklevel=3)
        rid = request_id or uuid.uuid4().hex
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        return _Call(
            to_instances(instances), build_config(resolved, strategy, seed, **options), rid, self.config.metadata(rid), deadline
        )

    def _plain(self, request_id: str | None) -> tuple[str, tuple[tuple[str, str], ...], float | None]:
        """(request id, metadata, deadline) of a campaign call."""
        rid = request_id or uuid.uuid4().hex
        return rid, self.config.metadata(rid), None if self.timeout_s is None else time.monotonic() + self.timeout_s


def _timeout(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInput(FieldViolation("chunk_size", f"must be a whole number >= 1, got {chunk_size!r}"))


def _on_retry(on_progress: Progress | None):
    return None if on_progress is None else (lambda attempt, _wait_s: on_progress("retry", attempt))


class RouterClient(_Client):
    """Blocking client. ``timeout_s`` is the deadline of a whole call, retries included (propagated
    downstream); ``None`` = no client deadline (the router's maximum applies).

    Channel options (see ``ChannelConfig``) as keywords, e.g.
    ``RouterClient(address, api_key=key, root_certificates=ca_pem)``, or ``config=ChannelConfig(...)``.
    """

    def __init__(
        self,
        address: str,
        timeout_s: float | None = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        config: ChannelConfig | None = None,
        **channel_options,
    ):
        super().__init__(timeout_s, max_message_bytes, config, channel_options)
        if self.config.secure:
            self._channel = grpc.secure_channel(address, self.config.credentials(), options=self.config.options())
        else:
            self._channel = grpc.insecure_channel(address, options=self.config.options())
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._campaigns = campaign_pb2_grpc.CampaignServiceStub(self._channel)

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def route(
        self,
        instances: Sequence[InstanceLike],
        budget: Budget | Cost | str | None = None,
        strategy: str = "",
        seed: int = 0,
        *,
        fraction: float | None = None,
        count: int | None = None,
        cost: float | None = None,
        request_id: str | None = None,
        **options,
    ) -> RouteResult:
        """Route one batch with ``RouteInstances`` (up to the server's batch limit).

        ``instances``: ``PreferenceInstance`` objects or dicts (the JSONL schema). The budget:
        exactly one of ``fraction=``, ``count=``, ``cost=`` or ``budget=`` (a ``Budget``, ``"auto"``,
        ``"25%"``, ...; see ``hybridpref_client.budget``). ``options``: ``judge_mode``,
        ``judge_template``, ``replay_judge``, ``explain_top_k``, ``simulated_candidates``, ``campaign`` (route for
        that campaign: no budget then, the campaign's governs; every decision is stored, a re-sent id returns
        its stored decision and spends nothing) and ``batch`` (the campaign batch's name; default: the request id).
        Raises ``InvalidInput`` before sending anything, or a ``RoutingError`` subclass.
        """
        call = self._call(instances, budget, strategy, seed, fraction, count, cost, request_id, options)
        request = unary_request(call.instances, call.config)

        def attempt() -> RouteResult:
            try:
                resp = self._stub.RouteInstances(request, timeout=call.timeout(), metadata=call.metadata)
            except grpc.RpcError as exc:
                raise routing_error(exc, call.request_id) from None
            return result_from_response(resp, call.request_id)

        return self._retrier.call(attempt, call.deadline)

    def route_stream(
        self,
        instances: Sequence[InstanceLike],
        budget: Budget | Cost | str | None = None,
        strategy: str = "",
        seed: int = 0,
        *,
        fraction: float | None = None,
        count: int | None = None,
        cost: float | None = None,
        request_id: str | None = None,
        chunk_size: int = STREAM_CHUNK,
        on_progress: Progress | None = None,
        **options,
    ) -> RouteResult:
        """Route a batch of any size with ``RouteInstancesStream`` (arguments as ``route``).

        ``on_progress(phase, n)``: ("sent", k) per chunk sent; while the router works, ("tagged", k),
        ("judged", k) and, for a campaign, ("stored", k): k more instances through that stage (a few
        times a second; stages the strategy does not need are not reported); ("received", k) per
        decision chunk received; ("retry", attempt) before a retry (counts then start again).
        """
        _check_chunk_size(chunk_size)
        call = self._call(instances, budget, strategy, seed, fraction, count, cost, request_id, options)
        call.config.report_progress = on_progress is not None

        def attempt() -> RouteResult:
            collector = StreamCollector(call.request_id, on_progress)
            requests = stream_requests(call.instances, call.config, chunk_size, on_progress)
            try:
                for message in self._stub.RouteInstancesStream(requests, timeout=call.timeout(), metadata=call.metadata):
                    collector.add(message)
            except grpc.RpcError as exc:
                error = routing_error(exc, call.request_id)
                error.partial = collector.received > 0
                raise error from None
            return collector.result

        return self._retrier.call(attempt, call.deadline, _on_retry(on_progress))

    # ---- campaigns --------------------------------------------------------------------------------------

    def _unary(self, method, request, request_id: str | None):
        rid, metadata, deadline = self._plain(request_id)

        def attempt():
            try:
                return method(request, timeout=_timeout(deadline), metadata=metadata)
            except grpc.RpcError as exc:
                raise routing_error(exc, rid) from None

        return self._retrier.call(attempt, deadline)

    def create_campaign(
        self,
        name: str,
        budget: str | None = None,
        *,
        count: int | None = None,
        cost: float | None = None,
        strategy: str = "",
        judge: str = "",
        votes_per_pair: int = 1,
        expected_instances: int | None = None,
        exploration_share: float = 0.0,
        request_id: str | None = None,
    ) -> Campaign:
        """Create a campaign with a total human budget: ``count=N`` human labels, ``cost=X`` cost units, or
        ``budget="count:N"|"cost:X"``. ``strategy``: whose scores spend it ("" = the router's default);
        ``judge``: "" = the judge service, else a recorded judge's name (replay); ``expected_instances``: the
        stream's expected size, which paces the spending (see docs/campaigns.md). Raises
        ``AlreadyExistsError`` when the name is taken, ``InvalidArgumentError`` for a bad setting."""
        request = create_campaign_request(
            name,
            campaign_budget(budget, count=count, cost=cost),
            strategy=strategy,
            judge=judge,
            votes_per_pair=votes_per_pair,
            expected_instances=expected_instances,
            exploration_share=exploration_share,
        )
        return campaign_from_proto(self._unary(self._campaigns.CreateCampaign, request, request_id).campaign)

    def update_campaign(
        self,
        name: str,
        budget: str | None = None,
        *,
        count: int | None = None,
        cost: float | None = None,
        expected_instances: int | None = None,
        request_id: str | None = None,
    ) -> Campaign:
        """Change a campaign's total budget (a top-up, or a cut to no less than what is spent; in its own unit)
        and / or the stream's expected size; the next batch routes with them. ``InvalidArgumentError`` names
        the field; ``NotFoundError`` if unknown."""
        request = update_campaign_request(name, budget, count=count, cost=cost, expected_instances=expected_instances)
        return campaign_from_proto(self._unary(self._campaigns.UpdateCampaign, request, request_id).campaign)

    def close_campaign(self, name: str, *, request_id: str | None = None) -> Campaign:
        """Close a campaign: no new instance is routed for it (``FailedPreconditionError`` for a batch with new
        ids; a re-sent id still gets its stored decision); labels, status and export go on. Idempotent."""
        request = campaign_pb2.CloseCampaignRequest(name=name)
        return campaign_from_proto(self._unary(self._campaigns.CloseCampaign, request, request_id).campaign)

    def get_campaign(self, name: str, *, request_id: str | None = None) -> CampaignStatus:
        """The campaign and its status (budget, labels, agreement, corrections); ``NotFoundError`` if unknown."""
        return status_from_proto(self._unary(self._campaigns.GetCampaign, campaign_pb2.GetCampaignRequest(name=name), request_id))

    def list_campaigns(self, *, request_id: str | None = None) -> list[Campaign]:
        """The caller's campaigns, oldest first."""
        resp = self._unary(self._campaigns.ListCampaigns, campaign_pb2.ListCampaignsRequest(), request_id)
        return [campaign_from_proto(c) for c in resp.campaigns]

    def submit_labels(
        self, campaign: str, labels: Iterable[LabelLike], *, source: str = "", request_id: str | None = None
    ) -> list[LabelResult]:
        """Store human labels (``HumanLabel`` objects or dicts ``{"id", "label": "A"|"B"|"tie", "annotator",
        "strength"?, "rationale"?, "labelled_at"?}``); one ``LabelResult`` per label, in order. A malformed
        label raises ``InvalidInput`` before anything is sent; an id the campaign never routed comes back
        ``rejected`` and the rest is stored. Safe to retry: a label already stored is ``unchanged``.
        ``source``: where the labels come from, stored with each (e.g. "label-studio"; "" = "api")."""
        items = to_labels(labels)
        out: list[LabelResult] = []
        for request in submit_labels_requests(campaign, items, source=source):
            out += label_results(self._unary(self._campaigns.SubmitLabels, request, request_id), len(out))
        return out

    def retract_labels(
        self, campaign: str, annotator: str, ids: Iterable[str] | None = None, *, request_id: str | None = None
    ) -> int:
        """Remove ``annotator``'s labels: all of them with ``ids=None``, else those on ``ids`` (an empty list
        removes nothing); returns how many went. Safe to retry."""
        request = retract_request(campaign, annotator, ids)
        if request is None:
            return 0
        return int(self._unary(self._campaigns.RetractLabels, request, request_id).retracted)

    def export_dataset(self, campaign: str, format: str = "trl", *, request_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The campaign's dataset, one dict per row in routing order, read as it streams (``trl``: prompt,
        chosen, rejected, label_source, judge, confidence, votes, tie, campaign, batch, ...; ``trl-chat``: the
        same in TRL's conversational form, prompt a list of turns and chosen / rejected one assistant turn
        each; ``pool``: the pool schema ``hybridpref evaluate`` reads)."""
        request = export_request(campaign, format)
        rid, metadata, deadline = self._plain(request_id)
        try:
            for message in self._campaigns.ExportDataset(request, timeout=_timeout(deadline), metadata=metadata):
                yield from export_rows(message, format)
        except grpc.RpcError as exc:
            raise routing_error(exc, rid) from None

    def pending_pairs(
        self, campaign: str, annotator: str = "", *, page_size: int = 500, request_id: str | None = None
    ) -> Iterator[PendingPair]:
        """The campaign's human-routed pairs that still need votes, in routing order, read a page at a time
        (``ListPendingPairs``); ``annotator``: leave out the pairs this annotator already labelled. Each page is
        a retried call; labels stored while this runs shift nothing (the pages follow a cursor)."""
        token = ""
        while True:
            request = pending_pairs_request(campaign, annotator, page_size, token)
            response = self._unary(self._campaigns.ListPendingPairs, request, request_id)
            yield from pending_pairs_from_proto(response)
            token = response.next_page_token
            if not token:
                return


class AsyncRouterClient(_Client):
    """asyncio client with the same methods, arguments and channel options as ``RouterClient``."""

    def __init__(
        self,
        address: str,
        timeout_s: float | None = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        config: ChannelConfig | None = None,
        **channel_options,
    ):
        super().__init__(timeout_s, max_message_bytes, config, channel_options)
        if self.config.secure:
            self._channel = grpc.aio.secure_channel(address, self.config.credentials(), options=self.config.options())
        else:
            self._channel = grpc.aio.insecure_channel(address, options=self.config.options())
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._campaigns = campaign_pb2_grpc.CampaignServiceStub(self._channel)

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def route(
        self,
        instances: Sequence[InstanceLike],
        budget: Budget | Cost | str | None = None,
        strategy: str = "",
        seed: int = 0,
        *,
        fraction: float | None = None,
        count: int | None = None,
        cost: float | None = None,
        request_id: str | None = None,
        **options,
    ) -> RouteResult:
        """``RouterClient.route`` for asyncio."""
        call = self._call(instances, budget, strategy, seed, fraction, count, cost, request_id, options)
        request = unary_request(call.instances, call.config)

        async def attempt() -> RouteResult:
            try:
                resp = await self._stub.RouteInstances(request, timeout=call.timeout(), metadata=call.metadata)
            except grpc.RpcError as exc:
                raise routing_error(exc, call.request_id) from None
            return result_from_response(resp, call.request_id)

        return await self._retrier.acall(attempt, call.deadline)

    async def route_stream(
        self,
        instances: Sequence[InstanceLike],
        budget: Budget | Cost | str | None = None,
        strategy: str = "",
        seed: int = 0,
        *,
        fraction: float | None = None,
        count: int | None = None,
        cost: float | None = None,
        request_id: str | None = None,
        chunk_size: int = STREAM_CHUNK,
        on_progress: Progress | None = None,
        **options,
    ) -> RouteResult:
        """``RouterClient.route_stream`` for asyncio, ``on_progress`` included."""
        _check_chunk_size(chunk_size)
        call = self._call(instances, budget, strategy, seed, fraction, count, cost, request_id, options)
        call.config.report_progress = on_progress is not None

        async def attempt() -> RouteResult:
            collector = StreamCollector(call.request_id, on_progress)
            requests = stream_requests(call.instances, call.config, chunk_size, on_progress)
            try:
                async for message in self._stub.RouteInstancesStream(requests, timeout=call.timeout(), metadata=call.metadata):
                    collector.add(message)
            except grpc.RpcError as exc:
                error = routing_error(exc, call.request_id)
                error.partial = collector.received > 0
                raise error from None
            return collector.result

        return await self._retrier.acall(attempt, call.deadline, _on_retry(on_progress))

    # ---- campaigns --------------------------------------------------------------------------------------

    async def _unary(self, method, request, request_id: str | None):
        rid, metadata, deadline = self._plain(request_id)

        async def attempt():
            try:
                return await method(request, timeout=_timeout(deadline), metadata=metadata)
            except grpc.RpcError as exc:
                raise routing_error(exc, rid) from None

        return await self._retrier.acall(attempt, deadline)

    async def create_campaign(
        self,
        name: str,
        budget: str | None = None,
        *,
        count: int | None = None,
        cost: float | None = None,
        strategy: str = "",
        judge: str = "",
        votes_per_pair: int = 1,
        expected_instances: int | None = None,
        exploration_share: float = 0.0,
        request_id: str | None = None,
    ) -> Campaign:
        """``RouterClient.create_campaign`` for asyncio."""
        request = create_campaign_request(
            name,
            campaign_budget(budget, count=count, cost=cost),
            strategy=strategy,
            judge=judge,
            votes_per_pair=votes_per_pair,
            expected_instances=expected_instances,
            exploration_share=exploration_share,
        )
        return campaign_from_proto((await self._unary(self._campaigns.CreateCampaign, request, request_id)).campaign)

    async def update_campaign(
        self,
        name: str,
        budget: str | None = None,
        *,
        count: int | None = None,
        cost: float | None = None,
        expected_instances: int | None = None,
        request_id: str | None = None,
    ) -> Campaign:
        """``RouterClient.update_campaign`` for asyncio."""
        request = update_campaign_request(name, budget, count=count, cost=cost, expected_instances=expected_instances)
        return campaign_from_proto((await self._unary(self._campaigns.UpdateCampaign, request, request_id)).campaign)

    async def close_campaign(self, name: str, *, request_id: str | None = None) -> Campaign:
        """``RouterClient.close_campaign`` for asyncio."""
        request = campaign_pb2.CloseCampaignRequest(name=name)
        return campaign_from_proto((await self._unary(self._campaigns.CloseCampaign, request, request_id)).campaign)

    async def get_campaign(self, name: str, *, request_id: str | None = None) -> CampaignStatus:
        """``RouterClient.get_campaign`` for asyncio."""
        return status_from_proto(
            await self._unary(self._campaigns.GetCampaign, campaign_pb2.GetCampaignRequest(name=name), request_id)
        )

    async def list_campaigns(self, *, request_id: str | None = None) -> list[Campaign]:
        """``RouterClient.list_campaigns`` for asyncio."""
        resp = await self._unary(self._campaigns.ListCampaigns, campaign_pb2.ListCampaignsRequest(), request_id)
        return [campaign_from_proto(c) for c in resp.campaigns]

    async def submit_labels(
        self, campaign: str, labels: Iterable[LabelLike], *, source: str = "", request_id: str | None = None
    ) -> list[LabelResult]:
        """``RouterClient.submit_labels`` for asyncio."""
        items = to_labels(labels)
        out: list[LabelResult] = []
        for request in submit_labels_requests(campaign, items, source=source):
            out += label_results(await self._unary(self._campaigns.SubmitLabels, request, request_id), len(out))
        return out

    async def retract_labels(
        self, campaign: str, annotator: str, ids: Iterable[str] | None = None, *, request_id: str | None = None
    ) -> int:
        """``RouterClient.retract_labels`` for asyncio."""
        request = retract_request(campaign, annotator, ids)
        if request is None:
            return 0
        return int((await self._unary(self._campaigns.RetractLabels, request, request_id)).retracted)

    async def export_dataset(
        self, campaign: str, format: str = "trl", *, request_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """``RouterClient.export_dataset`` for asyncio: ``async for row in client.export_dataset(name)``."""
        request = export_request(campaign, format)
        rid, metadata, deadline = self._plain(request_id)
        try:
            async for message in self._campaigns.ExportDataset(request, timeout=_timeout(deadline), metadata=metadata):
                for row in export_rows(message, format):
                    yield row
        except grpc.RpcError as exc:
            raise routing_error(exc, rid) from None

    async def pending_pairs(
        self, campaign: str, annotator: str = "", *, page_size: int = 500, request_id: str | None = None
    ) -> AsyncIterator[PendingPair]:
        """``RouterClient.pending_pairs`` for asyncio: ``async for pair in client.pending_pairs(name)``."""
        token = ""
        while True:
            request = pending_pairs_request(campaign, annotator, page_size, token)
            response = await self._unary(self._campaigns.ListPendingPairs, request, request_id)
            for pair in pending_pairs_from_proto(response):
                yield pair
            token = response.next_page_token
            if not token:
                return
