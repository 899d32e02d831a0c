"""The vendor's own recorded LM labels, replayed by the router (``RouteConfig.replay_judge``).

A request that names a recorded judge gets that judge's labels from its instances'
``lm_labels`` whatever backend the judge service runs: the router never asks the judge
service then. Name resolution and the per-order rules are the judge's replay backend's
(``hybridpref.common.recorded_judges``), so both give the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridpref.common.recorded_judges import replay_outcome, resolve_judge
from hybridpref.router.backends import JudgedBatch
from hybridpref.router.limits import replay_violations
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import PositionMode, PreferenceInstance


def replay_batch(instances: Sequence[PreferenceInstance], name: str, mode: PositionMode, seed: int) -> JudgedBatch:
    """Judge ``name``'s recorded verdicts on ``instances`` (same order), as the judge service's replay
    backend would give them; ``mode`` UNSPECIFIED = BOTH (the judge's default).
    ``InvalidInput`` when a row has no label from that judge."""
    violations = replay_violations(instances, name)
    if violations:
        raise InvalidInput(violations)
    mode = PositionMode.BOTH if mode == PositionMode.UNSPECIFIED else mode
    n = len(instances)
    out = JudgedBatch.empty(n)
    keys = []
    for k, inst in enumerate(instances):
        key = resolve_judge(inst.lm_labels.keys(), name)
        outcome = replay_outcome(inst, key, mode, seed)
        out.labels[k] = int(outcome.label)
        out.confidence[k] = outcome.confidence
        out.inconsistent[k] = outcome.order_inconsistent
        keys.append(key)
    out.judge_id = f"replay:{keys[0]}" if keys else f"replay:{name}"
    return out
