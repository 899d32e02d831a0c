"""Core, gRPC-free types for preference instances and labels.

These are what every service core works on. Conversion to and from protobuf
messages lives in ``convert``; conversion from JSONL rows
(the schema of ``shared/data/*/pairs.jsonl`` and of the CLI's input) is here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybridpref_client.core.errors import FieldViolation, InvalidInput, quote


class Label(enum.IntEnum):
    """Five-level preference; values equal the proto enum ``hybridpref.v1.PreferenceLabel``."""

    UNSPECIFIED = 0
    A_MUCH_BETTER = 1
    A_BETTER = 2
    TIE = 3
    B_BETTER = 4
    B_MUCH_BETTER = 5

    @property
    def winner(self) -> str | None:
        """``"A"``, ``"B"`` or ``None`` (tie / unspecified): what a reward model trains on."""
        if self in (Label.A_MUCH_BETTER, Label.A_BETTER):
            return "A"
        if self in (Label.B_BETTER, Label.B_MUCH_BETTER):
            return "B"
        return None

    def swapped(self) -> Label:
        """The same verdict with A and B exchanged (for judging in the reversed order)."""
        return Label(6 - self.value) if self != Label.UNSPECIFIED else self


# Spellings accepted in JSONL rows. The shared data uses A / B / tie / tie_inconsistent.
_LABEL_SPELLINGS: dict[str, Label] = {
    "a": Label.A_BETTER,
    "b": Label.B_BETTER,
    "tie": Label.TIE,
    "tie_inconsistent": Label.TIE,
    **{lab.name.lower(): lab for lab in Label if lab != Label.UNSPECIFIED},
}


# metadata key prefix marking a recorded LM label that was "tie_inconsistent" (orders disagreed)
LM_LABEL_RAW_PREFIX = "lm_label_raw:"


def parse_label(value: Any) -> Label | None:
    """Parse a label spelling; ``None``/empty -> ``None``. Raises ``ValueError`` on unknown text."""
    if value is None or value == "":
        return None
    if isinstance(value, Label):
        return value
    key = str(value).strip().lower()
    if key not in _LABEL_SPELLINGS:
        raise ValueError(f"unknown label {value!r}; expected one of A, B, tie, {', '.join(label.name for label in Label)}")
    return _LABEL_SPELLINGS[key]


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class PreferenceInstance:
    """One pairwise instance: a prompt (or multi-turn ``messages``) and two responses.

    ``human_label`` / ``lm_labels`` are optional recorded labels (evaluation, replay).
    ``human_cost`` is an optional per-instance annotation cost for cost budgets.
    """

    id: str
    prompt: str
    response_a: str
    response_b: str
    messages: tuple[Message, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    human_label: Label | None = None
    lm_labels: dict[str, Label] = field(default_factory=dict)
    human_cost: float | None = None

    @property
    def prompt_text(self) -> str:
        """The prompt as one string: ``prompt`` or the conversation's turns joined."""
        if self.prompt:
            return self.prompt
        return "\n\n".join(f"{m.role}: {m.content}" for m in self.messages)


def is_blank(text: str) -> bool:
    """True when ``text`` has nothing to read: only whitespace, control and format characters
    (NUL, U+200B ZERO WIDTH SPACE, U+FEFF BOM, ...), which ``str.strip`` leaves in place."""
    return not any(ch.isprintable() and not ch.isspace() for ch in text)


def validate_instances(instances: Sequence[PreferenceInstance], max_batch: int | None = None) -> None:
    """Check a batch before any work; raises ``InvalidInput`` listing every bad field.

    Nothing is processed unless the whole batch is valid.
    """
    violations: list[FieldViolation] = []
    if max_batch is not None and len(instances) > max_batch:
        violations.append(
            FieldViolation(
                "instances", f"batch of {len(instances)} exceeds the limit of {max_batch}; split it or use the streaming RPC"
            )
        )
    seen: dict[str, int] = {}
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not inst.id or is_blank(inst.id):
            violations.append(FieldViolation(f"{where}.id", "missing id"))
        elif inst.id in seen:
            violations.append(
                FieldViolation(f"{where}.id", f"duplicate id {quote(inst.id)} (first at instances[{seen[inst.id]}])")
            )
        else:
            seen[inst.id] = i
        for name in ("response_a", "response_b"):
            if is_blank(getattr(inst, name)):
                violations.append(FieldViolation(f"{where}.{name}", "empty response"))
        if is_blank(inst.prompt) and not any(not is_blank(m.content) for m in inst.messages):
            violations.append(FieldViolation(f"{where}.prompt", "empty prompt and no messages"))
        if inst.human_cost is not None and not (inst.human_cost > 0 and inst.human_cost < float("inf")):
            violations.append(FieldViolation(f"{where}.human_cost", f"must be a positive finite number, got {inst.human_cost}"))
    if violations:
        raise InvalidInput(violations)


NUL_TEXT = "contains a NUL character (U+0000): not text (and no database keeps it)"


def fields_with_nul(inst: PreferenceInstance) -> list[str]:
    """The instance's text fields holding U+0000: a broken export, never meant as text. The router refuses
    them (PostgreSQL's text type cannot store one, so a campaign could not keep the instance); the tagger
    and the judge strip control characters themselves."""
    fields = [(name, getattr(inst, name)) for name in ("id", "prompt", "response_a", "response_b")]
    fields += [(f"messages[{k}]", m.role + m.content) for k, m in enumerate(inst.messages)]
    fields += [("metadata", "".join(f"{key}{value}" for key, value in inst.metadata.items()))]
    fields += [("lm_labels", "".join(inst.lm_labels))]
    return [name for name, text in fields if "\x00" in text]


def instance_from_row(row: Mapping[str, Any], where: str = "row") -> PreferenceInstance:
    """Build an instance from a JSONL row (the shared data schema).

    Raises ``InvalidInput`` naming ``where`` (e.g. ``"line 12"``) and the field.
    """
    if not isinstance(row, Mapping):
        raise InvalidInput(FieldViolation(where, f"expected a JSON object, got {type(row).__name__}"))
    violations: list[FieldViolation] = []

    def text(name: str, required: bool = True) -> str:
        value = row.get(name)
        if value is None:
            if required:
                violations.append(FieldViolation(f"{where}.{name}", "missing"))
            return ""
        if not isinstance(value, str):
            violations.append(FieldViolation(f"{where}.{name}", f"expected a string, got {type(value).__name__}"))
            return ""
        return value

    raw_id = row.get("id")
    inst_id = str(raw_id) if isinstance(raw_id, (str, int)) else ""
    if not inst_id:
        violations.append(FieldViolation(f"{where}.id", "missing id"))
    messages = _parse_messages(row.get("messages"), f"{where}.messages", violations)
    prompt = text("prompt", required=not messages)
    human_label = _label_field(row, "human_label", where, violations)
    lm_labels: dict[str, Label] = {}
    inconsistent: list[str] = []  # "tie_inconsistent" parses to TIE; keep it visible to the replay judge
    raw_lm = row.get("lm_labels") or {}
    if not isinstance(raw_lm, Mapping):
        violations.append(FieldViolation(f"{where}.lm_labels", "expected an object judge -> label"))
    else:
        for judge, value in raw_lm.items():
            try:
                parsed = parse_label(value)
            except ValueError as exc:
                violations.append(FieldViolation(f"{where}.lm_labels.{judge}", str(exc)))
                continue
            if parsed is not None:
                lm_labels[str(judge)] = parsed
            if isinstance(value, str) and value.strip().lower() == "tie_inconsistent":
                inconsistent.append(str(judge))
    cost = row.get("human_cost")
    if cost is not None and not isinstance(cost, (int, float)):
        violations.append(FieldViolation(f"{where}.human_cost", "expected a number"))
        cost = None
    metadata = {k: str(v) for k, v in (row.get("metadata") or {}).items()} if isinstance(row.get("metadata"), Mapping) else {}
    for judge in inconsistent:
        metadata[LM_LABEL_RAW_PREFIX + judge] = "tie_inconsistent"
    for key in ("category", "source", "question_id"):
        if key in row and row[key] is not None and key not in metadata:
            metadata[key] = str(row[key])
    inst = PreferenceInstance(
        id=inst_id,
        prompt=prompt,
        response_a=text("response_a"),
        response_b=text("response_b"),
        messages=tuple(messages),
        metadata=metadata,
        human_label=human_label,
        lm_labels=lm_labels,
        human_cost=float(cost) if cost is not None else None,
    )
    if violations:
        raise InvalidInput(violations)
    return inst


def _label_field(row: Mapping[str, Any], name: str, where: str, violations: list[FieldViolation]) -> Label | None:
    try:
        return parse_label(row.get(name))
    except ValueError as exc:
        violations.append(FieldViolation(f"{where}.{name}", str(exc)))
        return None


def _parse_messages(value: Any, where: str, violations: list[FieldViolation]) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        violations.append(FieldViolation(where, "expected a list of {role, content}"))
        return []
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            violations.append(FieldViolation(f"{where}[{i}]", "expected {role, content} with string content"))
            continue
        out.append(Message(role=str(m.get("role", "user")), content=m["content"]))
    return out


def instance_to_row(inst: PreferenceInstance) -> dict[str, Any]:
    """Inverse of ``instance_from_row`` (labels written as their 5-level names)."""
    row: dict[str, Any] = {"id": inst.id, "prompt": inst.prompt, "response_a": inst.response_a, "response_b": inst.response_b}
    if inst.messages:
        row["messages"] = [{"role": m.role, "content": m.content} for m in inst.messages]
    if inst.metadata:
        row["metadata"] = dict(inst.metadata)
    if inst.human_label is not None:
        row["human_label"] = inst.human_label.name
    if inst.lm_labels:
        row["lm_labels"] = {k: v.name for k, v in inst.lm_labels.items()}
    if inst.human_cost is not None:
        row["human_cost"] = inst.human_cost
    return row


def iter_json_rows(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed JSON value)`` for each non-blank line of a JSONL file.

    A line that is not UTF-8 text or not JSON raises ``InvalidInput`` naming ``path:line``."""
    import json

    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = decode_line(raw)
                yield lineno, json.loads(line)
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are
                raise InvalidInput(FieldViolation(f"{path}:{lineno}", line_problem(exc))) from None


def decode_line(raw: bytes) -> str:
    """A JSONL line's bytes as text; ``UnicodeDecodeError`` when they are not UTF-8."""
    return raw.decode("utf-8")


def line_problem(exc: ValueError) -> str:
    """One sentence for a line that could not be read (not UTF-8, or not JSON)."""
    import json

    if isinstance(exc, UnicodeDecodeError):
        byte = exc.object[exc.start]
        return (
            f"not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}): save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at column {exc.colno}"
    return f"cannot read: {exc}"


def iter_jsonl(path: str) -> Iterator[tuple[int, PreferenceInstance]]:
    """Yield ``(line number, instance)`` from a JSONL file, skipping blank lines.

    A bad row raises ``InvalidInput`` whose fields read ``line 12.response_a``.
    """
    for lineno, row in iter_json_rows(path):
        yield lineno, instance_from_row(row, where=f"line {lineno}")


def read_jsonl(path: str, limit: int | None = None) -> list[PreferenceInstance]:
    """Read instances from a JSONL file; errors name the file line and field."""
    out: list[PreferenceInstance] = []
    for _lineno, inst in iter_jsonl(path):
        out.append(inst)
        if limit is not None and len(out) >= limit:
            break
    return out


class PositionMode(enum.IntEnum):
    """Judge position-bias control; values equal the proto enum ``hybridpref.v1.PositionMode``."""

    UNSPECIFIED = 0
    BOTH = 1  # judge in both orders; disagreement -> TIE, low confidence, flag set
    RANDOM = 2  # one order, chosen by a seeded hash of the instance id
