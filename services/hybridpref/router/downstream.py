"""The router's three downstream services over gRPC (the ``hybridpref.router.backends`` protocols).

Each call forwards the request id and what is left of the caller's deadline (one
``Deadline`` for the whole request). The predictor is asked only for the routing model
(once per bundle version); every strategy runs in the router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from hybridpref.common.vocabulary import LEXICAL_MEASURES, VOCABULARY_VERSION
from hybridpref.router.backends import JudgedBatch, RouterTags
from hybridpref.router.limits import JudgeInfo, JudgeInfoCache
from hybridpref.router.model import ModelCache, RoutingModel
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.routing_model.proto import routing_model_from_proto
from hybridpref.server.channels import call_metadata, open_channel
from hybridpref.server.deadline import Deadline
from hybridpref.server.settings import Settings
from hybridpref.v1 import (
    common_pb2,
    judge_pb2,
    judge_pb2_grpc,
    predictor_pb2,
    predictor_pb2_grpc,
    tagger_pb2,
    tagger_pb2_grpc,
)
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.errors import BackendUnavailable, DeadlineExceeded, NotReady, clip
from hybridpref_client.core.instances import PositionMode, PreferenceInstance

# Small tag calls interleave with a big stream's chunks: a small caller waits at most for the
# one chunk the tagger is running (benchmarks/bench_load.py mixed: p99 ratio 2.8 at 256, 1.3 at 64).
TAG_CHUNK = 64
JUDGE_CHUNK = 32


def downstream_error(service: str, error: grpc.RpcError) -> Exception:
    """Map a downstream failure to a domain error the router's caller can act on."""
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{service}: deadline exceeded")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return NotReady(f"{service}: {error.details()}")
    from hybridpref_client.core.grpc_errors import retry_delay_s

    details = clip(error.details() or "", 300)  # backends' messages are already redacted; keep them short
    return BackendUnavailable(f"{service} call failed: {code.name}: {details}", retry_after_s=retry_delay_s(error))


class _AioClient:
    """A lazily opened grpc.aio channel: aio channels bind to the running event loop, so
    they are opened on first use, inside the server's loop.

    ``gate`` (the router's ``BackendWatcher``) makes calls fail fast while the backend is known
    down: refused before they are sent, and ended while they wait (a hung backend would otherwise
    hold them until their deadline)."""

    stub_class: type
    name: str = ""

    def __init__(self, address: str, settings: Settings):
        self._address, self._settings = address, settings
        self._channel: grpc.aio.Channel | None = None
        self.gate: Any = None

    async def _call(self, call: Any) -> Any:
        """Await the grpc.aio ``call``, or end it with ``BackendUnavailable`` once the backend is known down."""
        gate = self.gate
        if gate is None:
            return await call
        reason = gate.known_down(self.name)
        if reason is not None:
            call.cancel()
            raise BackendUnavailable(f"{reason}; failing fast", retry_after_s=gate.retry_after_s)
        down = asyncio.ensure_future(gate.down_event(self.name).wait())
        answer = asyncio.ensure_future(_await(call))
        answered = False
        try:
            await asyncio.wait({answer, down}, return_when=asyncio.FIRST_COMPLETED)
            answered = answer.done()
        finally:
            down.cancel()
            if not answered:
                answer.cancel()
                call.cancel()
        if not answered:
            raise BackendUnavailable(
                f"{gate.known_down(self.name) or self.name + ' is down'}; the call was ended", retry_after_s=gate.retry_after_s
            )
        return answer.result()

    @property
    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = open_channel(self._address, self._settings)
        return self.stub_class(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


async def _await(call: Any) -> Any:
    return await call


class TaggerClient(_AioClient):
    stub_class = tagger_pb2_grpc.TaggerServiceStub
    name = "tagger"

    async def tag(self, instances: Sequence[PreferenceInstance], deadline: Deadline) -> RouterTags:
        n = len(instances)
        out = RouterTags.empty(n)
        for start in range(0, n, TAG_CHUNK):
            chunk = instances[start : start + TAG_CHUNK]
            try:
                resp = await self._call(
                    self._stub.TagInstances(
                        tagger_pb2.TagInstancesRequest(instances=instances_to_proto(chunk)),
                        timeout=deadline.timeout(),
                        metadata=call_metadata(),
                    )
                )
            except grpc.RpcError as exc:
                raise downstream_error("tagger", exc) from None
            if resp.vocabulary_version != VOCABULARY_VERSION:
                raise NotReady(f"tagger speaks vocabulary {resp.vocabulary_version!r}, router {VOCABULARY_VERSION!r}")
            out.reference_bins_id = resp.reference_bins_id
            for k, item in enumerate(resp.instances):
                row = start + k
                out.tag_matrix[row, list(item.tags.indices)] = 1
                out.measures[row] = [item.measures.get(m, 0.0) for m in LEXICAL_MEASURES]
        return out


class JudgeClient(_AioClient):
    stub_class = judge_pb2_grpc.JudgeServiceStub
    name = "judge"

    def __init__(self, address: str, settings: Settings):
        super().__init__(address, settings)
        self._info = JudgeInfoCache(self.info)

    async def info(self, timeout: float | None) -> judge_pb2.GetJudgeInfoResponse:
        """What the judge accepts (templates, replay default); see ``router.limits.JudgeInfo``."""
        reply: judge_pb2.GetJudgeInfoResponse = await self._call(
            self._stub.GetJudgeInfo(judge_pb2.GetJudgeInfoRequest(), timeout=timeout, metadata=call_metadata())
        )
        return reply

    async def judge_info(self, timeout_s: float) -> JudgeInfo | None:
        """The judge's info, cached (``router.limits.JudgeInfoCache``); None while it cannot say."""
        return await self._info.get(timeout_s)

    async def judge(
        self,
        instances: Sequence[PreferenceInstance],
        *,
        mode: PositionMode,
        template: str,
        replay_judge: str,
        seed: int,
        deadline: Deadline,
    ) -> JudgedBatch:
        n = len(instances)
        out = JudgedBatch.empty(n)
        for start in range(0, n, JUDGE_CHUNK):
            chunk = instances[start : start + JUDGE_CHUNK]
            request = judge_pb2.JudgeInstancesRequest(
                instances=instances_to_proto(chunk),
                position_mode=common_pb2.PositionMode.ValueType(int(mode)),
                template=template,
                replay_judge=replay_judge,
                seed=seed,
            )
            try:
                resp = await self._call(self._stub.JudgeInstances(request, timeout=deadline.timeout(), metadata=call_metadata()))
            except grpc.RpcError as exc:
                raise downstream_error("judge", exc) from None
            if len(resp.judgements) != len(chunk):
                raise BackendUnavailable(f"judge returned {len(resp.judgements)} judgements for {len(chunk)} instances")
            for k, j in enumerate(resp.judgements):
                out.labels[start + k] = j.label
                out.confidence[start + k] = j.confidence
                out.inconsistent[start + k] = j.order_inconsistent
                if j.HasField("p_a_better"):
                    out.p_a_better[start + k] = j.p_a_better
                out.judge_id = j.judge_id or out.judge_id
        return out


class PredictorModelClient(_AioClient):
    """The routing model from the predictor (``GetRoutingModel``), cached per bundle version.

    Every ``routing_model`` call sends the version it holds; the predictor answers "unchanged"
    (a few bytes) or the new bundle's parameters, so a hot reload is picked up on the next request."""

    stub_class = predictor_pb2_grpc.PredictorServiceStub
    name = "predictor"

    def __init__(self, address: str, settings: Settings):
        super().__init__(address, settings)
        self.cache = ModelCache(self._fetch)

    async def routing_model(self, deadline: Deadline) -> RoutingModel:
        return await self.cache.get(deadline)

    async def _fetch(self, known: str, deadline: Deadline) -> RoutingModelData | None:
        request = predictor_pb2.GetRoutingModelRequest(known_bundle_version=known)
        try:
            resp = await self._call(self._stub.GetRoutingModel(request, timeout=deadline.timeout(), metadata=call_metadata()))
        except grpc.RpcError as exc:
            raise downstream_error("predictor", exc) from None
        return None if resp.unchanged else routing_model_from_proto(resp)
