"""Names of recorded LM judges (``lm_labels`` keys) and how a requested name resolves among them.

Shared by the judge's replay backend and the router's request checks. Per-order keys
``"<JUDGE>/order_ab"`` / ``".../order_ba"`` fold to their base name. Resolution: an exact base name wins;
otherwise a case- and punctuation-insensitive prefix (``"gpt4"`` finds ``"gpt-4 (pair-v2, both orders)"``)
when it names exactly one judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ORDER_SUFFIXES = ("/order_ab", "/order_ba")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _base(key: str) -> str:
    for suffix in ORDER_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def resolve_judge(keys: Sequence[str] | object, name: str) -> str:
    """The recorded judge ``name`` refers to among ``keys`` (per-order keys folded to their base).

    Raises ``LookupError`` (with the available names) when there is no label or the name is ambiguous.
    """
    bases = sorted({_base(k) for k in keys})  # type: ignore[union-attr]
    if name in bases:
        return name
    wanted = _norm(name)
    hits = [b for b in bases if _norm(b).startswith(wanted)] if wanted else []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise LookupError(f"no label from judge {name!r}; recorded judges: {', '.join(bases) or 'none'}")
    raise LookupError(f"judge name {name!r} is ambiguous: {', '.join(hits)}")
