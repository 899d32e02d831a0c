"""Replay judge backend: labels already recorded on the instances (``lm_labels``), for simulation and
evaluation on data that carries LM labels.

Judge names as recorded in ``../shared/data``:
  - ``mtbench_human_gpt4``: ``"gpt-4 (pair-v2, both orders)"`` (A / B / tie / tie_inconsistent)
  - ``pandalm``: ``"gpt-3.5-turbo"``, ``"pandalm-7b"``
  - ``llmbar``: per-order keys ``"<JUDGE>/<PROMPT>/order_ab"`` and ``".../order_ba"`` (already in stored
    order), e.g. ``"GPT-4/Vanilla_NoRules"``; ask for the part before ``/order_ab``.
Name resolution: an exact key (or exact ``name/order_ab|ba`` pair) wins; otherwise a case- and
punctuation-insensitive prefix (``"gpt4"`` finds ``"gpt-4 (pair-v2, both orders)"``) when it names
exactly one judge.

Confidence: 1.0 for a recorded A / B / tie verdict (it is what that judge said, consistently);
0.0 for ``tie_inconsistent`` and for per-order verdicts that disagree (label TIE, flag set).
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridpref.common import aggregate
from hybridpref.common.recorded_judges import replay_outcome, resolve_judge
from hybridpref.judge.templates import PromptTemplate
from hybridpref.judge.types import JudgeBackend, Judgement
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PositionMode, PreferenceInstance


class ReplayBackend(JudgeBackend):
    """Returns recorded labels. ``default_judge`` is used when a request names none."""

    kind = "replay"

    def __init__(self, default_judge: str | None = None):
        self.default_judge = default_judge
        self.judge_id = f"replay:{default_judge}" if default_judge else "replay"

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
        name = replay_judge or self.default_judge
        if not name:
            raise InvalidInput(FieldViolation("replay_judge", "the replay backend needs a judge name (none configured)"))
        violations: list[FieldViolation] = []
        out: list[Judgement] = []
        for i, inst in enumerate(instances):
            try:
                key = resolve_judge(inst.lm_labels.keys(), name)
                outcome = self._replay_one(inst, key, mode, seed)
            except LookupError as exc:
                violations.append(FieldViolation(f"instances[{i}].lm_labels", str(exc)))
                continue
            out.append(
                Judgement(
                    inst.id,
                    outcome.label,
                    outcome.confidence,
                    outcome.verdict_ab,
                    outcome.verdict_ba,
                    outcome.order_inconsistent,
                    f"replay:{key}",
                    "recorded",
                )
            )
        if violations:
            raise InvalidInput(violations)
        return out

    def _replay_one(self, inst: PreferenceInstance, key: str, mode: PositionMode, seed: int) -> aggregate.Outcome:
        return replay_outcome(inst, key, mode, seed)
