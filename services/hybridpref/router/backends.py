"""What the router core needs from its three downstream services, as small protocols (no gRPC here).

``RouterCore`` is given one implementation of each: the gRPC clients in
``hybridpref.router.downstream`` in the service, the in-process adapters in
``tests.support.local_router`` in tests, benchmarks and evaluation. The batches they return
are plain arrays, so the core never sees a proto.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hybridpref.common.signals import JudgeSignals, judge_keys, recorded_verdict
from hybridpref.common.vocabulary import LEXICAL_MEASURES, NUM_TAGS
from hybridpref.router.model import RoutingModel
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance

if TYPE_CHECKING:
    from hybridpref.router.limits import JudgeInfo


@dataclass
class RouterTags:
    """What the router keeps of the tagger's answer for a batch, rows in batch order: the tag matrix and
    the lexical measures (the budget's cost formula and the correction features read them), not the
    analyzer's text answers: at 100,000 streamed instances those dicts would dominate its memory."""

    tag_matrix: np.ndarray  # uint8 (n, NUM_TAGS)
    measures: np.ndarray  # float32 (n, len(LEXICAL_MEASURES))
    reference_bins_id: str = ""  # the tagger's bin edges (checked against the predictor bundle's)

    @staticmethod
    def empty(n: int) -> RouterTags:
        return RouterTags(np.zeros((n, NUM_TAGS), np.uint8), np.zeros((n, len(LEXICAL_MEASURES)), np.float32))

    @staticmethod
    def concat(parts: Sequence[RouterTags]) -> RouterTags:
        if not parts:
            return RouterTags.empty(0)
        return RouterTags(
            np.concatenate([p.tag_matrix for p in parts]), np.concatenate([p.measures for p in parts]), parts[0].reference_bins_id
        )


@dataclass
class JudgedBatch:
    labels: np.ndarray  # int (n,) Label values
    confidence: np.ndarray  # float64 (n,)
    inconsistent: np.ndarray  # bool (n,)
    # float64 (n,): P(A better); NaN where the judge gave none. None (the default) = all NaN, filled in here.
    p_a_better: np.ndarray = None  # type: ignore[assignment]
    judge_id: str = ""  # backend and model, e.g. "replay:gpt4", "learned:hybridpref-judge-v1"

    def __post_init__(self) -> None:
        if self.p_a_better is None:
            self.p_a_better = np.full(len(self.labels), np.nan)

    @staticmethod
    def empty(n: int, judge_id: str = "") -> JudgedBatch:
        return JudgedBatch(np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool), np.full(n, np.nan), judge_id)

    @staticmethod
    def concat(parts: Sequence[JudgedBatch]) -> JudgedBatch:
        if not parts:
            return JudgedBatch.empty(0)
        return JudgedBatch(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.inconsistent for p in parts]),
            np.concatenate([p.p_a_better for p in parts]),
            next((p.judge_id for p in reversed(parts) if p.judge_id), ""),
        )

    @property
    def replayed(self) -> bool:
        """Recorded labels (the replay judge), not a live verdict."""
        return self.judge_id.startswith("replay")

    @property
    def recorded_key(self) -> str:
        """The recorded judge a replay answer came from ("" for a live judge)."""
        return self.judge_id.partition(":")[2] if self.replayed else ""


class TaggerBackend(Protocol):
    async def tag(self, instances: Sequence[PreferenceInstance], deadline: Deadline) -> RouterTags:
        """Measures and tags of every instance, same order."""
        ...


class JudgeBackend(Protocol):
    async def judge_info(self, timeout_s: float) -> JudgeInfo | None:
        """What the judge accepts (backend, templates, default replay judge); None when it cannot say."""
        ...

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
        """One verdict per instance, same order."""
        ...


class RoutingModelSource(Protocol):
    async def routing_model(self, deadline: Deadline) -> RoutingModel:
        """The current bundle's routing model: fetched once per bundle version, checked on every
        call; raises ``NotReady`` when the predictor has no bundle."""
        ...


def judge_signals(judged: JudgedBatch, instances: Sequence[PreferenceInstance]) -> JudgeSignals:
    """``JudgeSignals`` from the judge's answers on ``instances`` (same order).

    * ``label``: +1 / -1 by the verdict's winner; 0 for a tie, no verdict or an order flip;
    * ``p_a``: the judge's ``p_a_better`` when it returns one; NaN for recorded labels (replay: they
      carry no probability, as in training); else its confidence mapped to A's side (conf for A,
      1 - conf for B, 0.5 for a tie);
    * ``order_flip``: the judge's order inconsistency;
    * ``agreement``: the judge API answers with one judge, so other judges' votes come from the
      instances' recorded ``lm_labels`` when the batch has them (every recorded judge but the
      one replayed): the share whose verdict equals ``label``; NaN where none is recorded.
    """
    n = len(instances)
    winners = np.array([Label(int(v)).winner or "" for v in judged.labels], dtype=object) if n else np.zeros(0, object)
    sign = np.where(winners == "A", 1, np.where(winners == "B", -1, 0)).astype(np.int8)
    flip = np.asarray(judged.inconsistent, dtype=bool)
    sign[flip] = 0
    if judged.replayed:
        p_a = np.full(n, np.nan)
    else:
        conf = np.clip(np.asarray(judged.confidence, dtype=np.float64), 0.0, 1.0)
        p_a = np.where(sign > 0, conf, np.where(sign < 0, 1.0 - conf, 0.5))
        p_a[np.asarray(judged.labels) == int(Label.UNSPECIFIED)] = np.nan
        given = np.asarray(judged.p_a_better, dtype=np.float64)
        p_a = np.where(np.isfinite(given), given, p_a)
    return JudgeSignals(label=sign, p_a=p_a, order_flip=flip, agreement=_agreement(instances, sign, judged.recorded_key))


def _agreement(instances: Sequence[PreferenceInstance], sign: np.ndarray, own_key: str) -> np.ndarray:
    out = np.full(len(instances), np.nan)
    others = [k for k in judge_keys(instances) if k != own_key]
    if not others:
        return out
    for i, inst in enumerate(instances):
        votes = [s for s, _, present in (recorded_verdict(inst, k) for k in others) if present]
        if votes:
            out[i] = float(np.mean([v == sign[i] for v in votes]))
    return out
