"""Field paths of instance violations (``instances[3].response_a``): read and rewrite their index.

A check that sees a chunk of a batch (a stream's chunk, a tagger call) names instances by their place in
the chunk; its caller shifts them to the batch (or, in the CLI, to the input file's line). One pattern,
here, for all of them. (It belongs beside ``FieldViolation`` in ``hybridpref_client.core.errors`` once the
SDK takes it.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from hybridpref_client.core.errors import FieldViolation

_INSTANCE = re.compile(r"^instances\[(\d+)\]")


def instance_index(field: str) -> int | None:
    """``3`` for ``instances[3].response_a``; ``None`` for a field of no single instance."""
    match = _INSTANCE.match(field)
    return int(match.group(1)) if match else None


def rename_instance(field: str, name: Callable[[int], str | None]) -> str:
    """``field`` with its ``instances[i]`` replaced by ``name(i)``; unchanged where ``name`` gives ``None``
    or the field names no single instance."""
    index = instance_index(field)
    new = None if index is None else name(index)
    return field if new is None else _INSTANCE.sub(lambda _: new, field, count=1)


def shift_instances(violations: Iterable[FieldViolation], offset: int) -> list[FieldViolation]:
    """The violations with instance indices moved by ``offset`` (a chunk's indices -> the batch's)."""
    return [FieldViolation(rename_instance(v.field, lambda i: f"instances[{i + offset}]"), v.description) for v in violations]
