"""Routing for a campaign: the pieces the router core uses when a request names one (no gRPC here).

Without a campaign a request's own budget is spent by the strategy's per-batch selection. With one,
the strategy only *scores* the batch (``strategies.scores``: its ``StrategySpec.score``); the campaign
store decides, in one database transaction per slice, which instances go to humans under the campaign's
total budget (``hybridpref.store.policy``) and stores every decision with what a later refit or export
needs: the texts, the LM label and confidence, the judge's signals, the correction model's features,
the expected correction, the judge's and the bundle's versions. A re-sent id comes back as stored and
spends nothing, so a retried request (or a re-sent stream) never double counts.

Every instance of a campaign batch is judged before the decision (whatever the strategy): the stored
decision carries the LM label that the export and the judge-human agreement read.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from hybridpref_client.core.errors import NotReady
from hybridpref_client.core.instances import Label, PreferenceInstance
from hybridpref.store.api import Candidate, CampaignStore, StoredDecision

# Decisions stored per database transaction: a batch up to this size is stored whole or not at all; a
# longer stream in slices of this size, each atomic (a re-sent stream replays the slices already stored).
CAMPAIGN_SLICE = 20_000
# Significant digits kept of the stored correction features (JSON text: 6 digits are plenty for a refit).
FEATURE_DIGITS = 6

log = structlog.get_logger()


@dataclass(frozen=True)
class CampaignRoute:
    """The campaign a request routes for: whose (``vendor``), which (``name``), the batch's name as stored,
    and the campaign's budget kind (``count`` scores as they are, ``cost`` per unit of human cost)."""

    vendor: str
    name: str
    batch: str
    budget_kind: str


@dataclass(frozen=True)
class JudgeRows:
    """The judge-first pass of a batch, rows in batch order: labels (n,) ``Label`` values, confidence (n,),
    order flips (n,) bool, P(A better) (n,) NaN where unknown, agreement with other judges (n,) NaN where
    none is recorded, the expected corrections (n,) and P(LM label wrong) (n,) from the correction model or
    ``None``, the correction features (n, F) or ``None`` with their names, and the judge's id."""

    labels: np.ndarray
    confidence: np.ndarray
    order_flip: np.ndarray
    p_a: np.ndarray
    agreement: np.ndarray
    expected_gain: np.ndarray | None
    p_lm_wrong: np.ndarray | None
    features: np.ndarray | None
    feature_names: tuple[str, ...]
    judge_id: str


class StoreProvider:
    """The campaign store, opened on the first campaign call (routing without a campaign never opens it).

    ``url``: a store URL (``hybridpref.store.engine.resolve_url``: "" = the local SQLite file). A SQLite
    store is migrated when opened (the embedded default); any other database must already be at the
    newest revision (``hybridpref store migrate``): otherwise every campaign call fails with
    ``FAILED_PRECONDITION`` naming the command, and the next call tries again. ``store``: an open store to
    use instead (tests, benchmarks)."""

    def __init__(self, url: str = "", store: CampaignStore | None = None):
        self.url = url
        self._store = store
        self._lock = threading.Lock()

    def get(self) -> CampaignStore:
        """The open store (blocking: call it off the event loop)."""
        if self._store is not None:
            return self._store
        with self._lock:
            if self._store is None:
                self._store = _open(self.url)
        return self._store

    def close(self) -> None:
        with self._lock:
            close = getattr(self._store, "close", None)
            if close is not None:
                close()
            self._store = None


def _open(url: str) -> CampaignStore:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from hybridpref.store.engine import resolve_url
    from hybridpref.store.sql import SqlCampaignStore

    resolved = resolve_url(url or None)
    shown = make_url(resolved).render_as_string(hide_password=True)
    try:
        store = SqlCampaignStore.open(resolved, upgrade=resolved.startswith("sqlite"))
    except SQLAlchemyError as exc:  # unreachable, wrong password, ...: the caller may retry later
        log.warning("campaign_store_unavailable", url=shown, error=str(exc).splitlines()[0][:300])
        raise NotReady(f"the campaign store at {shown} cannot be opened: {str(exc).splitlines()[0][:200]}") from None
    log.info("campaign_store_opened", url=shown)
    return store


def candidates(instances: Sequence[PreferenceInstance], rows: Sequence[int], scores: np.ndarray, costs: np.ndarray,
               judged: JudgeRows) -> list[Candidate]:
    """The store's candidates for ``instances`` (rows ``rows`` of the batch, same order): texts, score and
    cost, the LM label and confidence, the judge's signals, the correction features, the expected
    correction; multi-turn conversations and the instance metadata go to ``metadata``."""
    out: list[Candidate] = []
    for inst, i in zip(instances, rows, strict=True):
        label = Label(int(judged.labels[i]))
        meta: dict[str, Any] = dict(inst.metadata)
        if inst.messages:
            meta["messages"] = [{"role": m.role, "content": m.content} for m in inst.messages]
        out.append(Candidate(
            instance_id=inst.id, prompt=inst.prompt_text, response_a=inst.response_a, response_b=inst.response_b,
            score=float(scores[i]), cost=float(costs[i]),
            lm_label=label.name if label != Label.UNSPECIFIED else None,
            lm_confidence=_unit(judged.confidence[i]),
            signals=_signals(inst, judged, i),
            features=_features(judged, i),
            expected_correction=None if judged.expected_gain is None else _finite(judged.expected_gain[i]),
            metadata=meta,
        ))
    return out


def _signals(inst: PreferenceInstance, judged: JudgeRows, i: int) -> dict[str, Any]:
    """The judge's signals of row ``i`` as JSON values, and the instance's recorded LM labels (``lm_labels``:
    judge -> A / B / tie, the panel the pool export carries)."""
    out: dict[str, Any] = {"judge_id": judged.judge_id, "order_flip": bool(judged.order_flip[i])}
    # p_lm_wrong: what the bundle expects of the LM label; returned human labels are measured against it.
    columns = [("p_a", judged.p_a), ("agreement", judged.agreement)]
    if judged.p_lm_wrong is not None:
        columns.append(("p_lm_wrong", judged.p_lm_wrong))
    for key, values in columns:
        value = _finite(values[i])
        if value is not None:
            out[key] = value
    recorded = {name: label.winner or "tie" for name, label in inst.lm_labels.items() if label != Label.UNSPECIFIED}
    if recorded:
        out["lm_labels"] = recorded
    return out


def _features(judged: JudgeRows, i: int) -> dict[str, float]:
    if judged.features is None:
        return {}
    row = judged.features[i]
    return {name: float(f"{float(v):.{FEATURE_DIGITS}g}") for name, v in zip(judged.feature_names, row) if math.isfinite(v)}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _unit(value: Any) -> float | None:
    value = _finite(value)
    return None if value is None else min(1.0, max(0.0, value))


def stored_human_mask(decisions: Sequence[StoredDecision]) -> np.ndarray:
    return np.fromiter((d.human for d in decisions), dtype=bool, count=len(decisions))
