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

from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import LM_LABEL_RAW_PREFIX, Label, PositionMode, PreferenceInstance
from hybridpref.judge import aggregate
from hybridpref.judge.templates import PromptTemplate
from hybridpref.judge.types import JudgeBackend, Judgement
from hybridpref.common.recorded_judges import resolve_judge

class ReplayBackend(JudgeBackend):
    """Returns recorded labels. ``default_judge`` is used when a request names none."""

    kind = "replay"

    def __init__(self, default_judge: str | None = None):
        self.default_judge = default_judge
        self.judge_id = f"replay:{default_judge}" if default_judge else "replay"

    def judge(self, instances: Sequence[PreferenceInstance], *, mode: PositionMode, template: PromptTemplate,
              seed: int, replay_judge: str | None, deadline: Deadline) -> list[Judgement]:
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
            out.append(Judgement(inst.id, outcome.label, outcome.confidence, outcome.verdict_ab, outcome.verdict_ba,
                                 outcome.order_inconsistent, f"replay:{key}", "recorded"))
        if violations:
            raise InvalidInput(violations)
        return out

    def _replay_one(self, inst: PreferenceInstance, key: str, mode: PositionMode, seed: int) -> aggregate.Outcome:
        if key in inst.lm_labels:
            return _recorded(inst, key)
        ab, ba = inst.lm_labels.get(key + "/order_ab"), inst.lm_labels.get(key + "/order_ba")
        if mode == PositionMode.RANDOM and ab is not None and ba is not None:
            swapped = aggregate.random_order_swapped(inst.id, seed)
            ab, ba = (None, ba) if swapped else (ab, None)
        if ab is not None and ba is not None:
            return aggregate.both(aggregate.one_hot(ab), aggregate.one_hot(ba))
        if ab is not None:
            return aggregate.single(aggregate.one_hot(ab), swapped=False)
        assert ba is not None  # resolve_judge only returns keys with at least one label
        return aggregate.single(aggregate.one_hot(ba), swapped=True)


def _recorded(inst: PreferenceInstance, key: str) -> aggregate.Outcome:
    label = inst.lm_labels[key]
    if inst.metadata.get(LM_LABEL_RAW_PREFIX + key) == "tie_inconsistent":
        return aggregate.Outcome(Label.TIE, 0.0, Label.UNSPECIFIED, Label.UNSPECIFIED, True)
    return aggregate.Outcome(label, 1.0, Label.UNSPECIFIED, Label.UNSPECIFIED, False)
