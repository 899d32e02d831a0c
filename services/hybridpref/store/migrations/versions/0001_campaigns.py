"""Campaigns, routing decisions and human labels.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types at this revision (never import the live models in a migration).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("vendor", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("budget_kind", sa.String(8), nullable=False),
        sa.Column("budget_total", sa.Float(), nullable=False),
        sa.Column("strategy", sa.String(128), nullable=False),
        sa.Column("judge", sa.String(128), nullable=False),
        sa.Column("votes_per_pair", sa.Integer(), nullable=False),
        sa.Column("expected_instances", sa.BigInteger(), nullable=True),
        sa.Column("exploration_share", sa.Float(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("spent", sa.Float(), nullable=False),
        sa.Column("routed", sa.BigInteger(), nullable=False),
        sa.Column("human_routed", sa.BigInteger(), nullable=False),
        sa.Column("score_sample", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.UniqueConstraint("vendor", "name", name="uq_campaigns_vendor_name"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("instance_id", sa.String(256), nullable=False),
        sa.Column("batch_id", sa.String(256), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response_a", sa.Text(), nullable=False),
        sa.Column("response_b", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("human", sa.Boolean(), nullable=False),
        sa.Column("exploration", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("lm_label", sa.String(16), nullable=True),
        sa.Column("lm_confidence", sa.Float(), nullable=True),
        sa.Column("expected_correction", sa.Float(), nullable=True),
        sa.Column("signals", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE", name="fk_decisions_campaign_id_campaigns"),
        sa.UniqueConstraint("campaign_id", "instance_id", name="uq_decisions_campaign_instance"),
    )
    op.create_index("ix_decisions_campaign_order", "decisions", ["campaign_id", "id"])
    op.create_table(
        "labels",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("decision_id", BigId, nullable=False),
        sa.Column("annotator", sa.String(256), nullable=False),
        sa.Column("preference", sa.String(3), nullable=False),
        sa.Column("strength", sa.SmallInteger(), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("labelled_at", TZ, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("audit", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE", name="fk_labels_campaign_id_campaigns"),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], ondelete="CASCADE", name="fk_labels_decision_id_decisions"),
        sa.UniqueConstraint("decision_id", "annotator", name="uq_labels_decision_annotator"),
    )
    op.create_index("ix_labels_campaign", "labels", ["campaign_id", "decision_id"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("decisions")
    op.drop_table("campaigns")
