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


def judge_names(keys) -> list[str]:
    """The recorded judges among ``lm_labels`` keys, per-order keys folded to their base, sorted."""
    return sorted({_base(k) for k in keys})


def resolve_judge(keys: Sequence[str] | object, name: str) -> str:
    """The recorded judge ``name`` refers to among ``keys`` (per-order keys folded to their base).

    Raises ``LookupError`` (with the available names) when there is no label or the name is ambiguous.
    """
    bases = judge_names(keys)
    if name in bases:
        return name
    wanted = _norm(name)
    hits = [b for b in bases if _norm(b).startswith(wanted)] if wanted else []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise LookupError(f"no label from judge {name!r}; recorded judges: {', '.join(bases) or 'none'}")
    raise LookupError(f"judge name {name!r} is ambiguous: {', '.join(hits)}")


def replay_outcome(inst, key: str, mode, seed: int):
    """The recorded verdict of judge ``key`` (a name ``resolve_judge`` returned) on ``inst``, as an
    ``aggregate.Outcome`` in stored order.

    ``mode`` (``PositionMode``): with per-order labels, BOTH combines the two orders (a flip is a TIE
    with the flag set and confidence 0), RANDOM keeps one order chosen by a seeded hash of the id.
    Confidence is 1.0 for a recorded A / B / tie verdict, 0.0 for ``tie_inconsistent`` (recorded
    flag). Shared by the judge's replay backend and the router, which replays a vendor's recorded
    labels itself whatever judge backend runs (``RouteConfig.replay_judge``).
    """
    from hybridpref.common import aggregate
    from hybridpref_client.core.instances import LM_LABEL_RAW_PREFIX, Label, PositionMode

    if key in inst.lm_labels:
        if inst.metadata.get(LM_LABEL_RAW_PREFIX + key) == "tie_inconsistent":
            return aggregate.Outcome(Label.TIE, 0.0, Label.UNSPECIFIED, Label.UNSPECIFIED, True)
        return aggregate.Outcome(inst.lm_labels[key], 1.0, Label.UNSPECIFIED, Label.UNSPECIFIED, False)
    ab, ba = inst.lm_labels.get(key + "/order_ab"), inst.lm_labels.get(key + "/order_ba")
    if mode == PositionMode.RANDOM and ab is not None and ba is not None:
        swapped = aggregate.random_order_swapped(inst.id, seed)
        ab, ba = (None, ba) if swapped else (ab, None)
    if ab is not None and ba is not None:
        return aggregate.both(aggregate.one_hot(ab), aggregate.one_hot(ba))
    if ab is not None:
        return aggregate.single(aggregate.one_hot(ab), swapped=False)
    if ba is None:
        raise LookupError(f"no label from judge {key!r}")
    return aggregate.single(aggregate.one_hot(ba), swapped=True)
