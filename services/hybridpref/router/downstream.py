"""The router's view of its three downstream services, over gRPC.

Each call forwards the request id and what is left of the caller's deadline (one
``Deadline`` for the whole request: every chunk call gets the time that remains). The
predictor client is synchronous on purpose: the routing strategies are plain,
CPU-bound functions run in a worker thread, and they call the predictor from there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from hybridpref.common.channels import call_metadata, open_channel, open_sync_channel
from hybridpref.common.deadline import Deadline
from hybridpref.common.convert import instances_to_proto
from hybridpref.common.errors import BackendUnavailable, DeadlineExceeded, NotReady, clip
from hybridpref.common.instances import PositionMode, PreferenceInstance
from hybridpref.common.settings import Settings
from hybridpref.common.vocabulary import LEXICAL_MEASURES, NUM_TAGS, VOCABULARY_VERSION
from hybridpref.v1 import (
    judge_pb2,
    judge_pb2_grpc,
    predictor_pb2,
    predictor_pb2_grpc,
    tagger_pb2,
    tagger_pb2_grpc,
)

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
    from hybridpref.common.grpc_errors import retry_delay_s

    details = clip(error.details() or "", 300)  # backends' messages are already redacted; keep them short
    return BackendUnavailable(f"{service} call failed: {code.name}: {details}", retry_after_s=retry_delay_s(error))


@dataclass
class TaggedBatch:
    # The router keeps only what routing reads (tags, measures), not the analyzer's text
    # answers: at 100,000 streamed instances those dicts would dominate its memory.
    tag_matrix: np.ndarray  # uint8 (n, NUM_TAGS)
    measures: np.ndarray  # float32 (n, len(LEXICAL_MEASURES))
    reference_bins_id: str = ""  # the tagger's bin edges (checked against the predictor bundle's)

    @staticmethod
    def concat(parts: Sequence[TaggedBatch]) -> TaggedBatch:
        if not parts:
            return TaggedBatch(np.zeros((0, NUM_TAGS), np.uint8), np.zeros((0, len(LEXICAL_MEASURES)), np.float32))
        return TaggedBatch(np.concatenate([p.tag_matrix for p in parts]), np.concatenate([p.measures for p in parts]),
                           parts[0].reference_bins_id)


@dataclass
class JudgedBatch:
    labels: np.ndarray  # int (n,) Label values
    confidence: np.ndarray  # float64 (n,)
    inconsistent: np.ndarray  # bool (n,)
    p_a_better: np.ndarray | None = None  # float64 (n,): P(A better); NaN where the judge gave none
    judge_id: str = ""  # backend and model of the last judgement, e.g. "learned:hybridpref-judge-v1"

    def __post_init__(self) -> None:
        if self.p_a_better is None:
            self.p_a_better = np.full(len(self.labels), np.nan)

    @staticmethod
    def concat(parts: Sequence[JudgedBatch]) -> JudgedBatch:
        if not parts:
            return JudgedBatch(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))
        return JudgedBatch(np.concatenate([p.labels for p in parts]), np.concatenate([p.confidence for p in parts]),
                           np.concatenate([p.inconsistent for p in parts]),
                           np.concatenate([p.p_a_better for p in parts]),  # type: ignore[misc]
                           next((p.judge_id for p in reversed(parts) if p.judge_id), ""))


class _AioClient:
    """A lazily opened grpc.aio channel: aio channels bind to the running event loop, so
    they are opened on first use, inside the server's loop."""

    stub_class: type

    def __init__(self, address: str, settings: Settings):
        self._address, self._settings = address, settings
        self._channel: grpc.aio.Channel | None = None

    @property
    def _stub(self):
        if self._channel is None:
            self._channel = open_channel(self._address, self._settings)
        return self.stub_class(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class TaggerClient(_AioClient):
    stub_class = tagger_pb2_grpc.TaggerServiceStub

    async def tag(self, instances: Sequence[PreferenceInstance], timeout: Deadline | float | None) -> TaggedBatch:
        deadline = Deadline.of(timeout)
        n = len(instances)
        out = TaggedBatch(np.zeros((n, NUM_TAGS), np.uint8), np.zeros((n, len(LEXICAL_MEASURES)), np.float32))
        for start in range(0, n, TAG_CHUNK):
            chunk = instances[start : start + TAG_CHUNK]
            try:
                resp = await self._stub.TagInstances(
                    tagger_pb2.TagInstancesRequest(instances=instances_to_proto(chunk)),
                    timeout=deadline.timeout(), metadata=call_metadata(),
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

    async def info(self, timeout: float | None) -> judge_pb2.GetJudgeInfoResponse:
        """What the judge accepts (templates, replay default); see ``router.limits.JudgeInfo``."""
        return await self._stub.GetJudgeInfo(judge_pb2.GetJudgeInfoRequest(), timeout=timeout, metadata=call_metadata())

    async def judge(
        self, instances: Sequence[PreferenceInstance], *, mode: PositionMode, template: str, replay_judge: str,
        seed: int, timeout: Deadline | float | None,
    ) -> JudgedBatch:
        deadline = Deadline.of(timeout)
        n = len(instances)
        out = JudgedBatch(np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool))
        for start in range(0, n, JUDGE_CHUNK):
            chunk = instances[start : start + JUDGE_CHUNK]
            request = judge_pb2.JudgeInstancesRequest(
                instances=instances_to_proto(chunk), position_mode=int(mode), template=template,
                replay_judge=replay_judge, seed=seed,
            )
            try:
                resp = await self._stub.JudgeInstances(request, timeout=deadline.timeout(), metadata=call_metadata())
            except grpc.RpcError as exc:
                raise downstream_error("judge", exc) from None
            if len(resp.judgements) != len(chunk):
                raise BackendUnavailable(f"judge returned {len(resp.judgements)} judgements for {len(chunk)} instances")
            for k, j in enumerate(resp.judgements):
                out.labels[start + k] = j.label
                out.confidence[start + k] = j.confidence
                out.inconsistent[start + k] = j.order_inconsistent
                if j.HasField("p_a_better"):
                    out.p_a_better[start + k] = j.p_a_better  # type: ignore[index]
                out.judge_id = j.judge_id or out.judge_id
        return out



class PredictorClient:
    """Synchronous predictor client that also implements the router's ``MixScorer``."""

    def __init__(self, address: str, settings: Settings, timeout: Deadline | float | None = None, metadata=()):
        self._channel = open_sync_channel(address, settings)
        self._stub = predictor_pb2_grpc.PredictorServiceStub(self._channel)
        self.timeout = timeout
        self.metadata = metadata

    def bound(self, timeout: Deadline | float | None, metadata) -> PredictorClient:
        """A view of this client with one call's deadline and metadata (shares the channel);
        each predictor call gets what is left of a ``Deadline`` when it starts."""
        view = copy.copy(self)
        view.timeout, view.metadata = timeout, metadata
        return view

    def _call(self, method, request):
        try:
            timeout = self.timeout.timeout() if isinstance(self.timeout, Deadline) else self.timeout
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise downstream_error("predictor", exc) from None

    def info(self) -> predictor_pb2.GetModelInfoResponse:
        return self._call(self._stub.GetModelInfo, predictor_pb2.GetModelInfoRequest())

    def score(self, counts: np.ndarray, pool_size: int) -> np.ndarray:
        request = predictor_pb2.ScoreMixesRequest(pool_size=pool_size, vocabulary_version=VOCABULARY_VERSION)
        for row in np.asarray(counts, dtype=np.float64):
            request.mixes.add(counts=row.tolist())
        return np.asarray(self._call(self._stub.ScoreMixes, request).scores, dtype=np.float64)

    def gains_explained(
        self, tag_matrix: np.ndarray, current: np.ndarray | None, pool_size: int, explain_top_k: int = 0
    ) -> tuple[np.ndarray, float, list[list[tuple[str, float]]]]:
        request = predictor_pb2.InstanceGainsRequest(
            pool_size=pool_size, explain_top_k=explain_top_k, vocabulary_version=VOCABULARY_VERSION
        )
        if current is not None:
            request.current.counts.extend(np.asarray(current, dtype=np.float64).tolist())
        for row in np.asarray(tag_matrix):
            request.instances.add(indices=np.flatnonzero(row).tolist())
        resp = self._call(self._stub.InstanceGains, request)
        explanations = [[(t.tag, t.contribution) for t in e.top_tags] for e in resp.explanations]
        return np.asarray(resp.gains, dtype=np.float64), resp.current_score, explanations

    def gains(self, tag_matrix: np.ndarray, current: np.ndarray | None, pool_size: int) -> np.ndarray:
        return self.gains_explained(tag_matrix, current, pool_size)[0]

    def quadratic_form(self):
        return None  # remote: strategies fall back to batched gains() calls

    def close(self) -> None:
        self._channel.close()
