"""Judge core: LM preference labels with position-bias control and a confidence (no gRPC here).

Usage::

    judge = Judge.from_config("learned")           # or "embedded" (SmolLM2), "openai" (base_url=..., model=...), "replay"
    judge.load()                                    # milliseconds (learned), seconds (embedded LM); idempotent
    out = judge.judge(instances, mode=PositionMode.BOTH, template="multipref", deadline=30)

``judge`` returns exactly one :class:`Judgement` per instance, in order, or raises
``InvalidInput`` / ``BackendUnavailable`` / ``DeadlineExceeded`` / ``NotReady``; it never drops one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridpref.judge.templates import TEMPLATES, get_template

# Re-exported: the judge's public API (``from hybridpref.judge.core import Judgement, ...``).
from hybridpref.judge.types import JudgeBackend, JudgeInfo, Judgement, ScoreRequest, ScoringBackend
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PositionMode, PreferenceInstance, validate_instances

__all__ = ["Deadline", "Judge", "JudgeBackend", "JudgeInfo", "Judgement", "ScoreRequest", "ScoringBackend"]


class Judge:
    """The judge service core: one backend, default template and position mode."""

    def __init__(
        self, backend: JudgeBackend, *, default_template: str = "multipref", default_mode: PositionMode = PositionMode.BOTH
    ):
        if default_mode == PositionMode.UNSPECIFIED:
            raise ValueError("default_mode must be BOTH or RANDOM")
        get_template(default_template, field="default_template")
        self.backend = backend
        self.default_template = default_template
        self.default_mode = default_mode

    @classmethod
    def from_config(
        cls,
        backend: str = "learned",
        *,
        default_template: str = "multipref",
        default_mode: PositionMode = PositionMode.BOTH,
        **options: Any,
    ) -> Judge:
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
                raise InvalidInput(
                    FieldViolation("backend", f"unknown judge backend {backend!r}; use learned, embedded, openai or replay")
                )
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

    def info(self) -> JudgeInfo:
        """What this judge advertises (``GetJudgeInfo``; the router checks names against it)."""
        return JudgeInfo(
            backend=self.backend.kind,
            judge_id=self.judge_id,
            templates=(*sorted(TEMPLATES), *sorted(t.template_version for t in TEMPLATES.values())),
            default_template=self.default_template,
            default_replay_judge=getattr(self.backend, "default_judge", None) or "",
        )

    def judge(
        self,
        instances: Sequence[PreferenceInstance],
        *,
        mode: PositionMode = PositionMode.UNSPECIFIED,
        template: str | None = None,
        seed: int = 0,
        replay_judge: str | None = None,
        deadline: Deadline | float | None = None,
    ) -> list[Judgement]:
        """Judge a batch: exactly one :class:`Judgement` per instance, same order.

        ``mode`` UNSPECIFIED -> the default (BOTH). ``template``: ``"multipref"``, ``"short"`` (or
        ``name@version``); ``None``/``""`` -> default. ``seed`` picks RANDOM mode's order per instance.
        ``deadline``: the call's ``Deadline`` (or the seconds it has left); raises ``DeadlineExceeded``
        rather than overrun it. Invalid input raises ``InvalidInput`` before any work.
        """
        deadline = Deadline.of(deadline)  # the call's Deadline (with cancellation), or seconds
        tpl = get_template(template, default=self.default_template)
        mode = self.default_mode if mode == PositionMode.UNSPECIFIED else PositionMode(mode)
        validate_instances(instances)
        if not instances:
            return []
        if not self.backend.ready:
            self.backend.load()
        deadline.check(what="starting")
        out = self.backend.judge(
            instances, mode=mode, template=tpl, seed=int(seed), replay_judge=replay_judge or None, deadline=deadline
        )
        if [j.id for j in out] != [i.id for i in instances]:
            raise RuntimeError("backend returned judgements that do not match the request")
        for j in out:
            j.backend = j.backend or self.backend.kind
        return out
