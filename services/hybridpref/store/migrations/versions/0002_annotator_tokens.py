"""Annotator tokens for the annotation page (issue 17) and the index of its "next pair" query.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "annotator_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("vendor", sa.String(128), nullable=False),
        sa.Column("annotator", sa.String(256), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_annotator_tokens"),
        sa.UniqueConstraint("token_sha256", name="uq_annotator_tokens_token_sha256"),
    )
    op.create_index("ix_annotator_tokens_vendor_annotator", "annotator_tokens", ["vendor", "annotator"])
    # pending_pairs: a campaign's human-routed decisions in arrival order, without a scan of the LM-routed ones
    op.create_index("ix_decisions_pending", "decisions", ["campaign_id", "human", "id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_pending", table_name="decisions")
    op.drop_index("ix_annotator_tokens_vendor_annotator", table_name="annotator_tokens")
    op.drop_table("annotator_tokens")
