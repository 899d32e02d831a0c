"""Instances left out of a routing (``RouteConfig.skip_invalid_instances``), and why.

Validation reports ``FieldViolation``s whose field starts with ``instances[i]`` (``i`` counted in
the caller's whole batch or stream); with the option set, the router leaves those instances out
and routes the others, while a violation of anything else (the config, the batch as a whole)
still refuses the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hybridpref_client.core.errors import FieldViolation

# Problems listed in one summary (the count covers the rest): a summary stays far below the message limit.
MAX_LISTED = 20_000
_INSTANCE = re.compile(r"^instances\[(\d+)\]")


@dataclass(frozen=True)
class Rejected:
    index: int  # in the caller's whole batch or stream
    id: str
    field: str
    description: str


def by_instance(violations: Sequence[FieldViolation]) -> tuple[dict[int, list[FieldViolation]], list[FieldViolation]]:
    """(instance index -> its violations, the violations about nothing in particular)."""
    per: dict[int, list[FieldViolation]] = {}
    other: list[FieldViolation] = []
    for v in violations:
        match = _INSTANCE.match(v.field)
        if match:
            per.setdefault(int(match.group(1)), []).append(v)
        else:
            other.append(v)
    return per, other


def rejected_of(per: dict[int, list[FieldViolation]], ids: dict[int, str]) -> list[Rejected]:
    """One ``Rejected`` per violation, in index order (``ids``: index -> the instance's id)."""
    return [Rejected(i, ids.get(i, ""), v.field, v.description) for i in sorted(per) for v in per[i]]
