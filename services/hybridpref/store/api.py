"""Contract of the campaign store (hybridpref.store), shared by the router (issue 20), the annotation app
(issue 17) and online learning (issue 19). The store helper implements it with SQLAlchemy 2 + Alembic in
services/hybridpref/store/ (this file becomes store/api.py); others code against these names. Extending is
fine; changing a signature below is not (other helpers depend on it)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np

BudgetKind = Literal["count", "cost"]
Preference = Literal["A", "B", "tie"]  # stored orientation: A/B as routed (never the shown order)
ExportFormat = Literal["trl", "trl-chat", "pool"]
# The vendor of every caller when the router runs without API keys (and of the CLI's local store): one
# vendor, so the embedded stack and `--db` see the same campaigns.
DEFAULT_VENDOR = "default"


@dataclass(frozen=True)
class CampaignSpec:
    vendor: str  # from the API key; a vendor sees only its own campaigns
    name: str  # unique per vendor
    budget_kind: BudgetKind
    budget_total: float  # human labels (count) or cost units (cost) for the whole campaign
    strategy: str = ""  # "" = the router's default strategy
    judge: str = ""  # "" = the judge service; else a recorded judge key (replay)
    votes_per_pair: int = 1  # human votes a human-routed pair needs
    expected_instances: int | None = None  # vendor's estimate of the stream size (spending policy)
    exploration_share: float = 0.0  # share of the human budget spent at random (issue 19)


@dataclass(frozen=True)
class Campaign:
    id: int
    spec: CampaignSpec
    created_at: datetime
    spent: float  # budget units reserved by human-routed decisions
    routed: int  # decisions stored
    human_routed: int
    labels_returned: int  # human votes stored (audit labels included)
    pairs_pending: int  # human-routed pairs with fewer votes than votes_per_pair
    closed_at: datetime | None = None  # closed: no new instance is routed (labels, status, export go on)


class FeatureVector(Mapping[str, float]):
    """One decision's correction features, packed: the names (one tuple shared by a batch's rows) and the
    values as little-endian float64 bytes, NaN where a feature is unknown (then absent from the mapping).

    What the router hands the store for its batches (``FeatureVector.rows``: no dict of floats per row) and
    what the store reads back; it compares equal to the dict of its finite values."""

    __slots__ = ("names", "packed")

    def __init__(self, names: tuple[str, ...], packed: bytes):
        if len(packed) != 8 * len(names):
            raise ValueError(f"{len(names)} feature names need {8 * len(names)} bytes of values, got {len(packed)}")
        self.names = names
        self.packed = packed

    @classmethod
    def rows(cls, names: Sequence[str], matrix: np.ndarray) -> list[FeatureVector]:
        """The rows of an (n, F) matrix, each a vector over ``names``; non-finite values become unknown."""
        values = np.array(matrix, dtype="<f8", order="C", ndmin=2)
        values[~np.isfinite(values)] = np.nan
        width = 8 * values.shape[1]
        shared, packed = tuple(names), values.tobytes()
        return [cls(shared, packed[k : k + width]) for k in range(0, len(packed), width)]

    @classmethod
    def of(cls, features: Mapping[str, float]) -> FeatureVector:
        """Pack a mapping of names to finite numbers (``ValueError`` / ``TypeError`` naming the first that is not)."""
        if isinstance(features, FeatureVector):
            return features
        names = tuple(features)
        for name in names:
            value = features[name]
            if not isinstance(name, str):
                raise TypeError(f"feature names are strings, got {type(name).__name__}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"feature {name!r}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"feature {name!r}: {value} is not a finite number")
        return cls(names, np.array([features[n] for n in names], dtype="<f8").tobytes())

    def array(self) -> np.ndarray:
        """All values in ``names`` order, NaN where unknown."""
        return np.frombuffer(self.packed, dtype="<f8")

    def __getitem__(self, name: str) -> float:
        try:
            value = float(self.array()[self.names.index(name)])
        except ValueError:
            raise KeyError(name) from None
        if math.isnan(value):
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        known = ~np.isnan(self.array())
        return (name for name, ok in zip(self.names, known.tolist()) if ok)

    def __len__(self) -> int:
        return int((~np.isnan(self.array())).sum())

    def __repr__(self) -> str:
        return f"FeatureVector({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One instance of a batch as the router hands it to the store: texts, the strategy's score (higher =
    more worth a human label), its cost, and what a later refit or export needs."""

    instance_id: str
    prompt: str
    response_a: str
    response_b: str
    score: float
    cost: float = 1.0
    lm_label: str | None = None  # hybridpref_client.core.instances.Label name, e.g. "A_BETTER"
    lm_confidence: float | None = None  # P(LM label correct) or the judge's confidence
    signals: dict[str, Any] = field(default_factory=dict)  # judge signals (flip, P(A), other judges...)
    features: Mapping[str, float] = field(default_factory=dict)  # correction-model inputs (a dict or FeatureVector)
    expected_correction: float | None = None  # P(human label fixes the LM label), as the summary promised
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredDecision:
    instance_id: str
    human: bool
    score: float
    cost: float
    batch_id: str
    exploration: bool  # routed to humans by the random exploration share
    replayed: bool  # True when the id was already stored: nothing new was spent
    lm_label: str | None = None
    model_version: str = ""
    # extensions (loop helper): what the router answers for a replayed id, as stored
    lm_confidence: float | None = None
    expected_correction: float | None = None


@dataclass(frozen=True, slots=True)
class HumanLabel:
    instance_id: str
    annotator: str
    preference: Preference
    strength: int | None = None  # 1 = slightly, 2 = clearly (5-point scale with tie); None = unknown
    rationale: str = ""
    labelled_at: datetime | None = None  # None = now
    source: str = "api"  # api | annotate | label-studio | ...


@dataclass(frozen=True, slots=True)
class LabelResult:
    index: int
    instance_id: str
    status: Literal["stored", "unchanged", "replaced", "rejected"]
    audit: bool = False  # label for an LM-routed instance (kept: it measures the judge)
    error: str = ""  # for "rejected": which field and why


@dataclass(frozen=True, slots=True)
class PendingPair:
    instance_id: str
    prompt: str
    response_a: str
    response_b: str
    votes: int
    votes_needed: int


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's returned votes and how they compare: ``with_others`` (Wilson 95%) over the annotator's
    non-tie votes on pairs whose *other* votes have a non-tie majority (leave-one-out: the annotator's own
    vote never decides), ``with_lm`` over the non-tie votes on pairs with a non-tie LM label. An annotator
    far below the others on ``with_others`` labels at random or misreads the task."""

    annotator: str
    votes: int
    with_others: Interval | None
    with_lm: Interval | None


@dataclass(frozen=True)
class CampaignStatus:
    campaign: Campaign
    budget_left: float
    labels_pending: int  # votes still wanted over human-routed pairs
    agreement: Interval | None  # judge-human agreement on returned non-tie labels (Wilson 95%)
    realised_corrections: int  # returned human majority differs from the LM label (non-tie)
    expected_corrections: Interval | None  # what the routing summaries promised for the labelled pairs
    # extensions (store helper): agreement on audit labels only (LM-routed pairs, an unbiased sample of
    # the judge) and how many labelled human-routed pairs carried an expected_correction
    audit_agreement: Interval | None = None
    expected_known: int = 0
    # the like-for-like check of the routing model: label changes realised against sum P(LM wrong), over the
    # ``changes_known`` human-routed pairs with a non-tie majority and a stored P(LM wrong)
    realised_changes: int = 0
    expected_changes: Interval | None = None
    changes_known: int = 0
    annotators: list[AnnotatorStats] = field(default_factory=list)  # most votes first (the same scan of the labels)


class CampaignStore(Protocol):
    def create_campaign(self, spec: CampaignSpec) -> Campaign: ...  # AlreadyExists if vendor+name taken
    def close_campaign(self, vendor: str, name: str) -> Campaign: ...  # idempotent: keeps the first closed_at
    def update_campaign(
        self,
        vendor: str,
        name: str,
        *,
        budget_total: float | None = None,
        expected_instances: int | None = None,
        budget_kind: str | None = None,
    ) -> Campaign: ...  # a top-up / cut of the budget (in budget_kind, checked), a new stream size; None = unchanged
    def get_campaign(self, vendor: str, name: str) -> Campaign: ...  # NotFound otherwise
    def list_campaigns(self, vendor: str) -> list[Campaign]: ...
    def decide_batch(
        self,
        vendor: str,
        name: str,
        batch_id: str,
        candidates: Sequence[Candidate],
        model_version: str = "",
        bundle_version: str = "",
    ) -> list[StoredDecision]: ...
    def submit_labels(self, vendor: str, name: str, labels: Sequence[HumanLabel]) -> list[LabelResult]: ...
    def delete_label(self, vendor: str, name: str, instance_id: str, annotator: str) -> bool: ...
    def retract_labels(self, vendor: str, name: str, annotator: str, instance_ids: Sequence[str] | None = None) -> int: ...
    def pending_pairs(self, vendor: str, name: str, annotator: str, limit: int = 1, after: str = "") -> list[PendingPair]: ...
    def export_rows(self, vendor: str, name: str, fmt: ExportFormat = "trl") -> Iterator[dict[str, Any]]: ...
    def status(self, vendor: str, name: str) -> CampaignStatus: ...
    def annotator_stats(self, vendor: str, name: str) -> list[AnnotatorStats]: ...  # most votes first
    def returned_labels(self, vendor: str, name: str) -> Iterator[tuple[Candidate, StoredDecision, list[HumanLabel]]]: ...
