"""In-process implementations of the router's backend protocols, over the service cores.

``RouterCore(settings, LocalTagger(Tagger("fast")), LocalJudge(judge), LocalModelSource(Predictor(path)))``
routes exactly as the service does, without a server: for tests, benchmarks and the evaluation
harness. The cores are blocking, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from hybridpref.router.backends import JudgedBatch, RouterTags
from hybridpref.router.limits import JudgeInfo
from hybridpref.router.model import ModelCache, RoutingModel
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.instances import PositionMode, PreferenceInstance


class LocalTagger:
    """Wraps ``hybridpref.tagger.core.Tagger``."""

    def __init__(self, tagger):
        self.tagger = tagger

    async def tag(self, instances: Sequence[PreferenceInstance], deadline: Deadline) -> RouterTags:
        batch = await asyncio.to_thread(self.tagger.tag, instances)
        bins = self.tagger.reference_bins.fingerprint() if self.tagger.reference_bins is not None else ""
        return RouterTags(np.asarray(batch.tag_matrix, np.uint8), np.asarray(batch.measures, np.float32), bins)


class LocalJudge:
    """Wraps ``hybridpref.judge.core.Judge``."""

    def __init__(self, judge):
        self.judge_core = judge

    async def judge_info(self, timeout_s: float) -> JudgeInfo | None:
        return JudgeInfo.of(self.judge_core.info())

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
        out = await asyncio.to_thread(
            self.judge_core.judge,
            instances,
            mode=mode,
            template=template or None,
            seed=seed,
            replay_judge=replay_judge or None,
            deadline=deadline,
        )
        return JudgedBatch(
            np.array([int(j.label) for j in out], np.int64),
            np.array([j.confidence for j in out], np.float64),
            np.array([j.order_inconsistent for j in out], bool),
            np.array([np.nan if j.p_a_better is None else j.p_a_better for j in out], np.float64),
            out[0].judge_id if out else "",
        )


class LocalModelSource:
    """Wraps ``hybridpref.predictor.core.Predictor``, with the same per-version cache as the gRPC client."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.cache = ModelCache(self._fetch)

    async def routing_model(self, deadline: Deadline) -> RoutingModel:
        return await self.cache.get(deadline)

    async def _fetch(self, known: str, deadline: Deadline) -> RoutingModelData | None:
        data = self.predictor.routing_model()
        return None if data.bundle_version == known else data
