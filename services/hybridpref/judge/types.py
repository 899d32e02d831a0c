"""The judge's shared types: what a backend returns (``Judgement``), what a scoring backend is asked
(``ScoreRequest``) and the backend interfaces. Backends import these, not ``judge.core``, which
builds backends: no import cycle between the core and its backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridpref.common import aggregate
from hybridpref.judge.templates import PromptTemplate
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance


@dataclass
class Judgement:
    """The judge's verdict on one instance (mirrors ``hybridpref.v1.Judgement``).

    ``confidence`` is in [0, 1]: for a consistent verdict, the probability mass on the winning side
    (>= 1/3 for 3 sides); for an order-inconsistent one, at most 0.5 and near 0 when both orders were
    confident. A confidence of 0 with both verdicts UNSPECIFIED means the backend gave no usable
    verdict (e.g. an endpoint answered with unparseable text): treat it as "needs a human".

    ``p_a_better``: probability that A is the better response, ``None`` when the backend gives none
    (recorded labels). Calibrated for the learned judge; for an LM, its option probabilities' A-side
    share (A / (A + B)), averaged over the orders it ran. ``backend``: ``learned``, ``embedded``,
    ``openai`` or ``replay`` (``judge_id`` adds the model).
    """

    id: str
    label: Label
    confidence: float
    verdict_ab: Label
    verdict_ba: Label
    order_inconsistent: bool
    judge_id: str
    template_version: str
    p_a_better: float | None = None
    backend: str = ""


@dataclass(frozen=True)
class JudgeInfo:
    """What a judge advertises (mirrors ``hybridpref.v1.GetJudgeInfoResponse``): its backend kind, its
    ``judge_id``, the template names it accepts (names, then ``name@version``s), its default template and,
    for the replay backend, whose recorded labels it returns when a request names none."""

    backend: str
    judge_id: str
    templates: tuple[str, ...]
    default_template: str
    default_replay_judge: str = ""


@dataclass(frozen=True)
class ScoreRequest:
    """One prompt to score: ``instance`` presented in stored order (``swapped=False``) or reversed."""

    instance: PreferenceInstance
    swapped: bool

    @property
    def first(self) -> str:
        return self.instance.response_b if self.swapped else self.instance.response_a

    @property
    def second(self) -> str:
        return self.instance.response_a if self.swapped else self.instance.response_b


class JudgeBackend(ABC):
    """A source of judgements. ``judge_id`` names backend and model, e.g. ``embedded:SmolLM2-135M-Instruct``."""

    judge_id: str = "unknown"
    kind: str = "unknown"  # backend family, reported in ``Judgement.backend``

    def load(self) -> None:  # noqa: B027 - a no-op unless the backend has a model or an endpoint to check
        """Load models / check configuration. Idempotent."""

    @property
    def ready(self) -> bool:
        return True

    @abstractmethod
    def judge(
        self,
        instances: Sequence[PreferenceInstance],
        *,
        mode: PositionMode,
        template: PromptTemplate,
        seed: int,
        replay_judge: str | None,
        deadline: Deadline,
    ) -> list[Judgement]:
        """One judgement per instance, same order (instances are already validated)."""


class ScoringBackend(JudgeBackend):
    """A backend that scores option probabilities for single prompts; position control lives here."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate, deadline: Deadline) -> list[np.ndarray | None]:
        """Per request, a (5,) distribution over labels *in presented order*, or ``None`` when the
        backend produced no usable verdict. Same length and order as ``requests``."""

    def judge(
        self,
        instances: Sequence[PreferenceInstance],
        *,
        mode: PositionMode,
        template: PromptTemplate,
        seed: int,
        replay_judge: str | None,
        deadline: Deadline,
    ) -> list[Judgement]:
        plan = [(inst, aggregate.orders_for(mode, inst.id, seed)) for inst in instances]
        requests = [ScoreRequest(inst, sw) for inst, orders in plan for sw in orders]
        dists = self.score(requests, template, deadline)
        if len(dists) != len(requests):  # a backend bug must never drop instances silently
            raise RuntimeError(f"backend returned {len(dists)} scores for {len(requests)} prompts")
        out: list[Judgement] = []
        pos = 0
        for inst, orders in plan:
            per_order = {sw: dists[pos + k] for k, sw in enumerate(orders)}
            pos += len(orders)
            outcome = _combine(per_order)
            out.append(
                Judgement(
                    inst.id,
                    outcome.label,
                    outcome.confidence,
                    outcome.verdict_ab,
                    outcome.verdict_ba,
                    outcome.order_inconsistent,
                    self.judge_id,
                    template.template_version,
                    p_a_better=_p_a_better(per_order),
                    backend=self.kind,
                )
            )
        return out


def _p_a_better(per_order: dict[bool, np.ndarray | None]) -> float | None:
    """Mean over the scored orders of the A side's share of the decisive mass (ties left out)."""
    shares = []
    for sw, dist in per_order.items():
        if dist is None:
            continue
        a, _, b = aggregate.side_masses(aggregate.to_stored_order(dist, sw))
        if a + b > 0:
            shares.append(a / (a + b))
    return float(np.mean(shares)) if shares else None


def _combine(per_order: dict[bool, np.ndarray | None]) -> aggregate.Outcome:
    stored = {sw: aggregate.to_stored_order(d, sw) for sw, d in per_order.items() if d is not None}
    if len(stored) == 2:
        return aggregate.both(stored[False], stored[True])
    if len(stored) == 1:
        ((sw, dist),) = stored.items()
        return aggregate.single(dist, sw)
    return aggregate.Outcome(Label.TIE, 0.0, Label.UNSPECIFIED, Label.UNSPECIFIED, False)
