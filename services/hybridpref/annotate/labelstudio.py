"""Label Studio hand-off: a campaign's pending human pairs as tasks, and Label Studio's JSON export back
as ``HumanLabel`` items.

Shapes:
- a task: ``{"data": {"instance_id", "campaign", "prompt", "response_a", "response_b"}}``; the two
  responses in the STORED order (response_a is the stored A), so a choice needs no mapping back;
- the labelling config (``label_config()``): prompt, A and B side by side as plain text (Label Studio's
  ``Text`` tag never renders HTML), a single 5-point ``Choices`` named ``preference`` whose aliases are
  the scale codes (A2, A1, tie, B1, B2: what the export carries), an optional ``TextArea`` ``rationale``;
- the export: Label Studio's "JSON" export, a list of tasks each with ``annotations``; one annotation =
  one vote by ``completed_by`` (a user id, or a user object with an e-mail when expanded).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from hybridpref.annotate.scale import SCALE, Choice, choice_for
from hybridpref.store.api import HumanLabel, PendingPair
from hybridpref_client.core.errors import FieldViolation

SOURCE = "label-studio"
PREFERENCE = "preference"  # the Choices control's name (from_name in results)
RATIONALE = "rationale"  # the TextArea control's name
MAX_RATIONALE_CHARS = 4000


def label_config(title: str = "Which response is better?") -> str:
    """Label Studio labelling config XML for a pairwise 5-point preference with an optional rationale."""
    choices = "\n".join(f'      <Choice value={quoteattr(c.text)} alias="{c.code}" hotkey="{c.key}"/>' for c in SCALE)
    return f"""<View>
  <Header value={quoteattr(title)}/>
  <View style="padding: 0.5em; background: #f4f4f4">
    <Header value="Prompt" size="5"/>
    <Text name="prompt" value="$prompt"/>
  </View>
  <View style="display: grid; grid-template-columns: 1fr 1fr; column-gap: 1em">
    <View>
      <Header value="Response A" size="5"/>
      <Text name="response_a" value="$response_a"/>
    </View>
    <View>
      <Header value="Response B" size="5"/>
      <Text name="response_b" value="$response_b"/>
    </View>
  </View>
  <Choices name="{PREFERENCE}" toName="prompt" choice="single-radio" required="true" showInline="true">
{choices}
  </Choices>
  <TextArea name="{RATIONALE}" toName="prompt" rows="3" maxSubmissions="1" editable="true" transcription="true"
            placeholder="Why? (optional)"/>
</View>
"""


def tasks(campaign: str, pairs: Iterable[PendingPair]) -> list[dict[str, Any]]:
    """Label Studio tasks for ``pairs`` (stored A/B order), one per pair."""
    return [
        {
            "data": {
                "instance_id": p.instance_id,
                "campaign": campaign,
                "prompt": p.prompt,
                "response_a": p.response_a,
                "response_b": p.response_b,
            }
        }
        for p in pairs
    ]


@dataclass
class ParsedExport:
    """What an export holds: the labels, and what was left out and why (``skipped``: a path such as
    ``[3].annotations[0]`` and a reason; cancelled / empty annotations are skipped, not errors)."""

    labels: list[HumanLabel] = field(default_factory=list)
    skipped: list[FieldViolation] = field(default_factory=list)
    errors: list[FieldViolation] = field(default_factory=list)


def annotator_name(completed_by: Any, users: Mapping[int, str] | None = None) -> str | None:
    """The annotator of one annotation: the user's e-mail where known (an expanded user object, or
    ``users`` mapping id -> e-mail), else ``label-studio-user-<id>``; None if absent."""
    if isinstance(completed_by, Mapping):
        email = completed_by.get("email")
        if isinstance(email, str) and email:
            return email
        completed_by = completed_by.get("id")
    if isinstance(completed_by, bool) or not isinstance(completed_by, int):
        return None
    if users and completed_by in users:
        return users[completed_by]
    return f"label-studio-user-{completed_by}"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _result_of(annotation: Mapping[str, Any]) -> tuple[list[str], str]:
    """(choice values, rationale) from an annotation's result list (other controls ignored)."""
    picked: list[str] = []
    rationale = ""
    for region in annotation.get("result") or []:
        if not isinstance(region, Mapping):
            continue
        value = region.get("value") or {}
        if region.get("from_name") == PREFERENCE:
            picked += [str(v) for v in value.get("choices") or []]
        elif region.get("from_name") == RATIONALE:
            rationale = "\n".join(str(t) for t in value.get("text") or []).strip()
    return picked, rationale


def parse_export(export: Any, users: Mapping[int, str] | None = None) -> ParsedExport:
    """Labels in a Label Studio JSON export (a list of tasks with ``annotations``).

    The annotation's choice is in the stored orientation (tasks show the stored order). Per task and
    annotator only the most recently updated annotation counts (Label Studio keeps one per user
    unless a user submits again); cancelled (skipped) annotations and tasks without an
    ``instance_id`` are reported in ``skipped``/``errors``, never guessed at."""
    out = ParsedExport()
    if not isinstance(export, list):
        out.errors.append(FieldViolation("export", "a Label Studio JSON export is a list of tasks"))
        return out
    for t, task in enumerate(export):
        where = f"[{t}]"
        data = task.get("data") if isinstance(task, Mapping) else None
        instance_id = data.get("instance_id") if isinstance(data, Mapping) else None
        if not isinstance(instance_id, str) or not instance_id:
            out.errors.append(FieldViolation(f"{where}.data.instance_id", "missing: not a task exported by hybridpref"))
            continue
        latest: dict[str, tuple[str, HumanLabel]] = {}
        for a, annotation in enumerate(task.get("annotations") or []):
            at = f"{where}.annotations[{a}]"
            if not isinstance(annotation, Mapping):
                out.errors.append(FieldViolation(at, "not an object"))
                continue
            if annotation.get("was_cancelled"):
                out.skipped.append(FieldViolation(at, "cancelled (skipped in Label Studio)"))
                continue
            who = annotator_name(annotation.get("completed_by"), users)
            if who is None:
                out.errors.append(FieldViolation(f"{at}.completed_by", "no user"))
                continue
            picked, rationale = _result_of(annotation)
            if not picked:
                out.skipped.append(FieldViolation(f"{at}.result", f"no {PREFERENCE!r} choice"))
                continue
            choice: Choice | None = choice_for(picked[0]) if len(picked) == 1 else None
            if choice is None:
                out.errors.append(
                    FieldViolation(f"{at}.result", f"{PREFERENCE!r} must be one of the 5 scale points, got {picked!r}")
                )
                continue
            stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
            label = HumanLabel(
                instance_id=instance_id,
                annotator=who,
                preference=choice.preference,
                strength=choice.strength,
                rationale=rationale[:MAX_RATIONALE_CHARS],
                labelled_at=_parse_time(stamp),
                source=SOURCE,
            )
            if who not in latest or stamp >= latest[who][0]:
                latest[who] = (stamp, label)
        out.labels += [label for _, label in latest.values()]
    return out


def load_export(path: str) -> Any:
    """The JSON of an export file (``json.JSONDecodeError`` names the line and column)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
