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

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from hybridpref.store.api import CampaignStore, Candidate, FeatureVector
from hybridpref_client.core.errors import NotReady
from hybridpref_client.core.instances import Label, PreferenceInstance

# Decisions stored per database transaction: a batch up to this size is stored whole or not at all; a
# longer stream in slices of this size, each atomic (a re-sent stream replays the slices already stored).
CAMPAIGN_SLICE = 20_000

log = structlog.get_logger()
# A recorded judge's label as the stored signals write it ("A", "B" or "tie").
_RECORDED = {label: label.winner or "tie" for label in Label if label != Label.UNSPECIFIED}


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

    try:
        resolved = resolve_url(url or None)
    except OSError as exc:  # the default file's folder cannot be made (a read-only root in a container)
        raise NotReady(
            f"no campaign store: set HYBRIDPREF_DB_URL (in Kubernetes: components/campaign-store); the "
            f"default SQLite file cannot be created ({exc.strerror})"
        ) from None
    shown = make_url(resolved).render_as_string(hide_password=True)
    try:
        store = SqlCampaignStore.open(resolved, upgrade=resolved.startswith("sqlite"))
    except (SQLAlchemyError, OSError) as exc:  # unreachable, wrong password, read-only, ...: the caller may retry
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log.warning("campaign_store_unavailable", url=shown, error=first)
        raise NotReady(f"the campaign store at {shown} cannot be opened: {first}") from None
    log.info("campaign_store_opened", url=shown)
    return store


def candidates(
    instances: Sequence[PreferenceInstance], rows: Sequence[int], scores: np.ndarray, costs: np.ndarray, judged: JudgeRows
) -> list[Candidate]:
    """The store's candidates for ``instances`` (rows ``rows`` of the batch, same order): texts, score and
    cost, the LM label and confidence, the judge's signals, the correction features, the expected
    correction; multi-turn conversations and the instance metadata go to ``metadata``. (The judge's id is
    the decisions' ``model_version``, not repeated in every row's signals.)"""
    picked = np.asarray(rows, dtype=np.int64)
    names = {int(v): Label(int(v)).name for v in np.unique(judged.labels[picked])}
    confidence = _column(np.clip(judged.confidence[picked], 0.0, 1.0))
    expected = None if judged.expected_gain is None else _column(judged.expected_gain[picked])
    signals = _signal_rows(judged, picked)
    features = _feature_rows(judged, picked)
    score, cost, labels = scores[picked].tolist(), costs[picked].tolist(), judged.labels[picked].tolist()
    out: list[Candidate] = []
    for k, inst in enumerate(instances):
        meta: Mapping[str, Any] = inst.metadata
        if inst.messages:
            meta = {**meta, "messages": [{"role": m.role, "content": m.content} for m in inst.messages]}
        signal = signals[k]
        recorded = {name: _RECORDED[label] for name, label in inst.lm_labels.items() if label in _RECORDED}
        if recorded:  # the panel the pool export carries
            signal["lm_labels"] = recorded
        label = int(labels[k])
        out.append(
            Candidate(
                instance_id=inst.id,
                prompt=inst.prompt_text,
                response_a=inst.response_a,
                response_b=inst.response_b,
                score=score[k],
                cost=cost[k],
                lm_label=names[label] if label != Label.UNSPECIFIED else None,
                lm_confidence=confidence[k],
                signals=signal,
                features=features[k],
                expected_correction=None if expected is None else expected[k],
                metadata=meta,
            )
        )
    return out


def _signal_rows(judged: JudgeRows, rows: np.ndarray) -> list[dict[str, Any]]:
    """The judge's signals of ``rows`` as JSON values (unknown ones left out): order flip, P(A better),
    agreement with other judges and P(LM label wrong), what the bundle expects of the LM label (returned
    human labels are measured against it)."""
    columns = [("p_a", judged.p_a), ("agreement", judged.agreement)]
    if judged.p_lm_wrong is not None:
        columns.append(("p_lm_wrong", judged.p_lm_wrong))
    flips = np.asarray(judged.order_flip, dtype=bool)[rows].tolist()
    values = [(key, _column(np.asarray(v, dtype=np.float64)[rows])) for key, v in columns]
    out = []
    for k, flip in enumerate(flips):
        row: dict[str, Any] = {"order_flip": flip}
        for key, column in values:
            if column[k] is not None:
                row[key] = column[k]
        out.append(row)
    return out


def _feature_rows(judged: JudgeRows, rows: np.ndarray) -> Sequence[Mapping[str, float]]:
    """Correction features of ``rows``, packed (one bytes slice per row over shared names; non-finite ones
    unknown): the store writes them as they are."""
    if judged.features is None:
        return [{} for _ in range(len(rows))]
    return FeatureVector.rows(judged.feature_names, judged.features[rows])


def _column(values: np.ndarray) -> list[float | None]:
    """A float column as Python values, ``None`` where not finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out: list[float | None] = values.tolist()
    if finite.all():
        return out
    return [v if ok else None for v, ok in zip(out, finite.tolist())]
