"""Size and range limits on request messages, checked on the protobuf messages before any
conversion or work (router, tagger and judge alike), so that an oversized or out-of-range
field is ``INVALID_ARGUMENT`` with a field violation, never ``INTERNAL``.

Enum fields are open in proto3: a caller can send any int32 where a ``PreferenceLabel`` or
``PositionMode`` is expected; only the defined values are accepted here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hybridpref_client.core.errors import FieldViolation, quote
from hybridpref_client.core.instances import Label, PositionMode

LABEL_VALUES = frozenset(int(v) for v in Label)
POSITION_MODE_VALUES = frozenset(int(v) for v in PositionMode)


@dataclass(frozen=True)
class Limits:
    """Per-instance limits. ``max_text_chars`` bounds each prompt, response and message."""

    max_text_chars: int = 200_000
    max_id_chars: int = 256
    max_messages: int = 256
    max_metadata_entries: int = 64
    max_metadata_chars: int = 4096
    max_lm_labels: int = 64
    max_name_chars: int = 256  # judge names (lm_labels keys), roles
    # Largest per-instance human cost: sums over a million instances stay far from overflow.
    max_human_cost: float = 1e6

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(max_text_chars=settings.max_text_chars)


DEFAULT_LIMITS = Limits()


def proto_instance_violations(msgs: Iterable, limits: Limits = DEFAULT_LIMITS, offset: int = 0) -> list[FieldViolation]:
    """Violations of ``hybridpref.v1.PreferenceInstance`` messages; indices start at ``offset``
    (the position of the first message in the caller's whole batch or stream)."""
    out: list[FieldViolation] = []
    for k, m in enumerate(msgs):
        where = f"instances[{k + offset}]"
        if len(m.id) > limits.max_id_chars:
            out.append(FieldViolation(f"{where}.id", f"longer than {limits.max_id_chars} characters"))
        for name in ("prompt", "response_a", "response_b"):
            if len(getattr(m, name)) > limits.max_text_chars:
                out.append(FieldViolation(f"{where}.{name}", f"longer than {limits.max_text_chars} characters"))
        if len(m.messages) > limits.max_messages:
            out.append(FieldViolation(f"{where}.messages", f"more than {limits.max_messages} messages"))
        else:
            for j, msg in enumerate(m.messages):
                if len(msg.content) > limits.max_text_chars or len(msg.role) > limits.max_name_chars:
                    out.append(FieldViolation(f"{where}.messages[{j}]", "role or content too long"))
        if len(m.metadata) > limits.max_metadata_entries:
            out.append(FieldViolation(f"{where}.metadata", f"more than {limits.max_metadata_entries} entries"))
        elif any(len(key) > limits.max_name_chars or len(value) > limits.max_metadata_chars for key, value in m.metadata.items()):
            out.append(
                FieldViolation(
                    f"{where}.metadata",
                    f"keys at most {limits.max_name_chars}, values at most {limits.max_metadata_chars} characters",
                )
            )
        if m.HasField("human_cost") and not 0 < m.human_cost <= limits.max_human_cost:
            out.append(FieldViolation(f"{where}.human_cost", f"must be in (0, {limits.max_human_cost:g}], got {m.human_cost:g}"))
        if m.human_label not in LABEL_VALUES:
            out.append(FieldViolation(f"{where}.human_label", f"unknown PreferenceLabel value {m.human_label}"))
        if len(m.lm_labels) > limits.max_lm_labels:
            out.append(FieldViolation(f"{where}.lm_labels", f"more than {limits.max_lm_labels} judges"))
        else:
            for judge, value in m.lm_labels.items():
                if len(judge) > limits.max_name_chars:
                    out.append(FieldViolation(f"{where}.lm_labels", f"judge name longer than {limits.max_name_chars} characters"))
                elif value not in LABEL_VALUES:
                    out.append(FieldViolation(f"{where}.lm_labels[{quote(judge, 64)}]", f"unknown PreferenceLabel value {value}"))
    return out


def position_mode_violation(value: int, field: str) -> FieldViolation | None:
    if value in POSITION_MODE_VALUES:
        return None
    return FieldViolation(field, f"unknown PositionMode value {value}; expected one of {sorted(POSITION_MODE_VALUES)}")
