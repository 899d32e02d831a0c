"""The campaign store: campaigns, routing decisions and human labels in SQLite or PostgreSQL (issue 20).

``api`` is the contract (dataclasses and the ``CampaignStore`` protocol); ``sql.SqlCampaignStore``
implements it on SQLAlchemy 2 with Alembic migrations (``engine.migrate``); ``policy`` is the spending
policy that spreads a campaign's budget over its batches; ``export`` writes the dataset out.
Imports stay light here: the router imports this package only when a campaign is used.
"""

from hybridpref.store.api import (
    Campaign,
    CampaignSpec,
    CampaignStatus,
    CampaignStore,
    Candidate,
    HumanLabel,
    Interval,
    LabelResult,
    PendingPair,
    StoredDecision,
)

__all__ = [
    "Campaign",
    "CampaignSpec",
    "CampaignStatus",
    "CampaignStore",
    "Candidate",
    "HumanLabel",
    "Interval",
    "LabelResult",
    "PendingPair",
    "StoredDecision",
    "open_store",
]


def open_store(url: str | None = None, *, upgrade: bool = False):
    """``SqlCampaignStore.open`` (see there), imported lazily (SQLAlchemy is not needed otherwise)."""
    from hybridpref.store.sql import SqlCampaignStore

    return SqlCampaignStore.open(url, upgrade=upgrade)
