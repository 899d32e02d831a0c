"""Protobuf <-> core type conversion (the only module that knows both)."""

from __future__ import annotations

from collections.abc import Sequence

from hybridpref.v1 import common_pb2
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label, Message, PreferenceInstance
from hybridpref_client.core.limits import DEFAULT_LIMITS, Limits, proto_instance_violations


def instance_from_proto(msg: common_pb2.PreferenceInstance) -> PreferenceInstance:
    return PreferenceInstance(
        id=msg.id,
        prompt=msg.prompt,
        response_a=msg.response_a,
        response_b=msg.response_b,
        messages=tuple(Message(m.role, m.content) for m in msg.messages),
        metadata=dict(msg.metadata),
        human_label=Label(msg.human_label) if msg.human_label else None,
        lm_labels={k: Label(v) for k, v in msg.lm_labels.items() if v},
        human_cost=msg.human_cost if msg.HasField("human_cost") else None,
    )


def instances_from_proto(
    msgs: Sequence[common_pb2.PreferenceInstance], limits: Limits | None = None, offset: int = 0, max_count: int | None = None
) -> list[PreferenceInstance]:
    """Convert after checking the count (``max_count``: at most this many, counted before anything
    else is looked at), sizes and enum ranges (``InvalidInput`` names ``instances[offset + k]``)."""
    check_count(len(msgs), max_count)
    violations = proto_instance_violations(msgs, limits or DEFAULT_LIMITS, offset)
    if violations:
        raise InvalidInput(violations)
    return [instance_from_proto(m) for m in msgs]


def check_count(
    n: int, max_count: int | None, field: str = "instances", what: str = "batch", hint: str = "split it or use the streaming RPC"
) -> None:
    """``InvalidInput`` when ``n`` instances exceed ``max_count`` (``None``: no limit). A repeated field's
    length is known without touching its elements: checked first, a million-instance request is
    refused in microseconds instead of after converting every instance."""
    if max_count is not None and n > max_count:
        raise InvalidInput(FieldViolation(field, f"{what} of {n} exceeds the limit of {max_count}; {hint}"))


def instance_to_proto(inst: PreferenceInstance) -> common_pb2.PreferenceInstance:
    msg = common_pb2.PreferenceInstance(
        id=inst.id,
        prompt=inst.prompt,
        response_a=inst.response_a,
        response_b=inst.response_b,
        messages=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in inst.messages],
        metadata=inst.metadata,
        human_label=int(inst.human_label or 0),
        lm_labels={k: int(v) for k, v in inst.lm_labels.items()},
    )
    if inst.human_cost is not None:
        msg.human_cost = inst.human_cost
    return msg


def instances_to_proto(instances: Sequence[PreferenceInstance]) -> list[common_pb2.PreferenceInstance]:
    return [instance_to_proto(i) for i in instances]
