"""Judge core: LM preference labels with position-bias control and a confidence (no gRPC here).

Usage::

    judge = Judge.from_config("learned")           # or "embedded" (SmolLM2), "openai" (base_url=..., model=...), "replay"
    judge.load()                                    # milliseconds (learned), seconds (embedded LM); idempotent
    out = judge.judge(instances, mode=PositionMode.BOTH, template="multipref", deadline_s=30)

``judge`` returns exactly one :class:`Judgement` per instance, in order, or raises
``InvalidInput`` / ``BackendUnavailable`` / ``DeadlineExceeded`` / ``NotReady``; it never drops one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridpref.common.deadline import Deadline
from hybridpref.common.errors import FieldViolation, InvalidInput
from hybridpref.common.instances import Label, PositionMode, PreferenceInstance, validate_instances
from hybridpref.judge import aggregate
from hybridpref.judge.templates import PromptTemplate, get_template


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

    def load(self) -> None:
        """Load models / check configuration. Idempotent."""

    @property
    def ready(self) -> bool:
        return True

    @abstractmethod
    def judge(self, instances: Sequence[PreferenceInstance], *, mode: PositionMode, template: PromptTemplate,
              seed: int, replay_judge: str | None, deadline: Deadline) -> list[Judgement]:
        """One judgement per instance, same order (instances are already validated)."""


class ScoringBackend(JudgeBackend):
    """A backend that scores option probabilities for single prompts; position control lives here."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate,
              deadline: Deadline) -> list[np.ndarray | None]:
        """Per request, a (5,) distribution over labels *in presented order*, or ``None`` when the
        backend produced no usable verdict. Same length and order as ``requests``."""

    def judge(self, instances: Sequence[PreferenceInstance], *, mode: PositionMode, template: PromptTemplate,
              seed: int, replay_judge: str | None, deadline: Deadline) -> list[Judgement]:
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
            out.append(Judgement(inst.id, outcome.label, outcome.confidence, outcome.verdict_ab, outcome.verdict_ba,
                                 outcome.order_inconsistent, self.judge_id, template.template_version,
                                 p_a_better=_p_a_better(per_order), backend=self.kind))
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
        (sw, dist), = stored.items()
        return aggregate.single(dist, sw)
    return aggregate.Outcome(Label.TIE, 0.0, Label.UNSPECIFIED, Label.UNSPECIFIED, False)


class Judge:
    """The judge service core: one backend, default template and position mode."""

    def __init__(self, backend: JudgeBackend, *, default_template: str = "multipref",
                 default_mode: PositionMode = PositionMode.BOTH):
        if default_mode == PositionMode.UNSPECIFIED:
            raise ValueError("default_mode must be BOTH or RANDOM")
        get_template(default_template, field="default_template")
        self.backend = backend
        self.default_template = default_template
        self.default_mode = default_mode

    @classmethod
    def from_config(cls, backend: str = "learned", *, default_template: str = "multipref",
                    default_mode: PositionMode = PositionMode.BOTH, **options: Any) -> Judge:
        """Build a judge from configuration.

        ``backend``: ``"learned"`` (the default; options: ``model`` (a spec JSON), ``threads``),
        ``"embedded"`` (a local LM; options: ``model``, ``max_prompt_tokens``, ``threads``),
        ``"openai"`` (``base_url``, ``model``, ``api_key`` / ``api_key_env`` / ``api_key_file``,
        ``concurrency``, ``max_retries``, ``timeout_s``, ``logprobs``) or ``"replay"``
        (``default_judge``). Unknown backend or option -> ``InvalidInput``.
        """
        name = backend.strip().lower()
        try:
            if name == "learned":
                from hybridpref.judge.learned import LearnedBackend
                impl: JudgeBackend = LearnedBackend(**options)
            elif name == "embedded":
                from hybridpref.judge.embedded import EmbeddedBackend
                impl = EmbeddedBackend(**options)
            elif name == "openai":
                from hybridpref.judge.openai_backend import OpenAIBackend
                impl = OpenAIBackend(**options)
            elif name == "replay":
                from hybridpref.judge.replay import ReplayBackend
                impl = ReplayBackend(**options)
            else:
                raise InvalidInput(FieldViolation("backend", f"unknown judge backend {backend!r}; use learned, embedded, openai or replay"))
        except TypeError as exc:  # unknown keyword option
            raise InvalidInput(FieldViolation("backend_options", f"{name}: {exc}")) from None
        return cls(impl, default_template=default_template, default_mode=default_mode)

    def load(self) -> None:
        """Load the backend's model or check its configuration; idempotent."""
        self.backend.load()

    @property
    def ready(self) -> bool:
        return self.backend.ready

    @property
    def judge_id(self) -> str:
        return self.backend.judge_id

    def judge(self, instances: Sequence[PreferenceInstance], *, mode: PositionMode = PositionMode.UNSPECIFIED,
              template: str | None = None, seed: int = 0, replay_judge: str | None = None,
              deadline_s: Deadline | float | None = None) -> list[Judgement]:
        """Judge a batch: exactly one :class:`Judgement` per instance, same order.

        ``mode`` UNSPECIFIED -> the default (BOTH). ``template``: ``"multipref"``, ``"short"`` (or
        ``name@version``); ``None``/``""`` -> default. ``seed`` picks RANDOM mode's order per instance.
        ``deadline_s``: seconds left of the caller's deadline; raises ``DeadlineExceeded`` rather than
        overrun it. Invalid input raises ``InvalidInput`` before any work.
        """
        deadline = Deadline.of(deadline_s)  # the call's Deadline (with cancellation), or seconds
        tpl = get_template(template, default=self.default_template)
        mode = self.default_mode if mode == PositionMode.UNSPECIFIED else PositionMode(mode)
        validate_instances(instances)
        if not instances:
            return []
        if not self.backend.ready:
            self.backend.load()
        deadline.check(what="starting")
        out = self.backend.judge(instances, mode=mode, template=tpl, seed=int(seed), replay_judge=replay_judge or None,
                                 deadline=deadline)
        if [j.id for j in out] != [i.id for i in instances]:
            raise RuntimeError("backend returned judgements that do not match the request")
        for j in out:
            j.backend = j.backend or self.backend.kind
        return out
