"""Tables of the campaign store (SQLAlchemy 2 declarative). The migrations in ``migrations/versions``
create exactly these (tests/store/test_store_migrations.py compares them with Alembic's autogenerate).

* ``campaigns``: one row per (vendor, name), with the spend counters that ``decide_batch`` updates
  under the row's lock (``spent`` = budget units reserved by human-routed decisions) and the spending
  policy's sample of the scores seen.
* ``decisions``: one row per (campaign, instance id): the texts, the strategy's score and cost, the
  routing outcome and what a refit needs (LM label, judge signals, correction features). ``id`` gives
  the campaign's arrival order (pending pairs, export).
* ``labels``: one row per (decision, annotator): a human vote; ``audit`` marks a vote on an LM-routed
  instance (it measures the judge).
* ``annotator_tokens`` (revision 0002): sha256 of the tokens that open the annotation page for one
  vendor's annotator; the plain token is shown once and never stored.
* ``campaigns.closed_at`` (revision 0003): when the campaign was closed (no new instance routed after it).
* ``feature_sets`` (revision 0004): the names of a correction model's features, once per distinct list;
  a decision keeps its features packed (``feature_values``: float64 little-endian, NaN = unknown, in the
  order of its ``feature_set_id``'s names) instead of a JSON object per row, which cost more to write than
  the rest of the row. Rows of earlier revisions (and decisions without features) keep ``features`` JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY is the autoincrementing rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")

# Lengths of caller strings (checked before they reach the database, where they would be a driver error).
MAX_VENDOR = 128
MAX_NAME = 200
MAX_INSTANCE_ID = 256
MAX_BATCH_ID = 256
MAX_ANNOTATOR = 256
MAX_SHORT = 128  # strategy, judge, versions, source


# Deterministic constraint names on both engines (Alembic needs names to alter or drop them).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class CampaignRow(Base):
    __tablename__ = "campaigns"
    __table_args__ = (UniqueConstraint("vendor", "name", name="uq_campaigns_vendor_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    vendor: Mapped[str] = mapped_column(String(MAX_VENDOR), nullable=False)
    name: Mapped[str] = mapped_column(String(MAX_NAME), nullable=False)
    budget_kind: Mapped[str] = mapped_column(String(8), nullable=False)
    budget_total: Mapped[float] = mapped_column(Float, nullable=False)
    strategy: Mapped[str] = mapped_column(String(MAX_SHORT), nullable=False, default="")
    judge: Mapped[str] = mapped_column(String(MAX_SHORT), nullable=False, default="")
    votes_per_pair: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    expected_instances: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    exploration_share: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    spent: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    routed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    human_routed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # the spending policy's sample of the scores seen (float64 little-endian; policy.update_sample)
    score_sample: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # revision 0003


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("campaign_id", "instance_id", name="uq_decisions_campaign_instance"),
        # a campaign's decisions in arrival order (export, refit: keyset pages by id)
        Index("ix_decisions_campaign_order", "campaign_id", "id"),
        # revision 0002: the annotation page's "next pair" query walks a campaign's human-routed rows in order
        Index("ix_decisions_pending", "campaign_id", "human", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False)
    instance_id: Mapped[str] = mapped_column(String(MAX_INSTANCE_ID), nullable=False)
    batch_id: Mapped[str] = mapped_column(String(MAX_BATCH_ID), nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    response_a: Mapped[str] = mapped_column(Text, nullable=False)
    response_b: Mapped[str] = mapped_column(Text, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    cost: Mapped[float] = mapped_column(Float, nullable=False)
    human: Mapped[bool] = mapped_column(Boolean, nullable=False)
    exploration: Mapped[bool] = mapped_column(Boolean, nullable=False)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)  # the batch's calibrated threshold
    lm_label: Mapped[str | None] = mapped_column(String(16), nullable=True)
    lm_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    expected_correction: Mapped[float | None] = mapped_column(Float, nullable=True)
    signals: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    features: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # revision <= 0003; else {}
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # Candidate.metadata
    model_version: Mapped[str] = mapped_column(String(MAX_SHORT), nullable=False, default="")
    bundle_version: Mapped[str] = mapped_column(String(MAX_SHORT), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # revision 0004: the correction features packed (FeatureVector); no foreign key: feature sets are never
    # deleted, and adding one to SQLite's decisions table would rebuild it
    feature_set_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    feature_values: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class FeatureSetRow(Base):
    __tablename__ = "feature_sets"
    __table_args__ = (UniqueConstraint("digest", name="uq_feature_sets_digest"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 of ``names`` as compact JSON
    names: Mapped[list[str]] = mapped_column(JSON, nullable=False)


class LabelRow(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("decision_id", "annotator", name="uq_labels_decision_annotator"),
        Index("ix_labels_campaign", "campaign_id", "decision_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"), nullable=False)
    annotator: Mapped[str] = mapped_column(String(MAX_ANNOTATOR), nullable=False)
    preference: Mapped[str] = mapped_column(String(3), nullable=False)  # A | B | tie
    strength: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    rationale: Mapped[str] = mapped_column(Text, nullable=False, default="")
    labelled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    source: Mapped[str] = mapped_column(String(MAX_SHORT), nullable=False, default="api")
    audit: Mapped[bool] = mapped_column(Boolean, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AnnotatorTokenRow(Base):
    __tablename__ = "annotator_tokens"
    __table_args__ = (
        UniqueConstraint("token_sha256", name="uq_annotator_tokens_token_sha256"),
        Index("ix_annotator_tokens_vendor_annotator", "vendor", "annotator"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    vendor: Mapped[str] = mapped_column(String(MAX_VENDOR), nullable=False)
    annotator: Mapped[str] = mapped_column(String(MAX_ANNOTATOR), nullable=False)
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


# The tables (declarative classes' __table__ is typed as a FromClause; these are Tables).
campaigns = cast(Table, CampaignRow.__table__)
decisions = cast(Table, DecisionRow.__table__)
labels = cast(Table, LabelRow.__table__)
annotator_tokens = cast(Table, AnnotatorTokenRow.__table__)
feature_sets = cast(Table, FeatureSetRow.__table__)
