"""Decisions keep their correction features packed: ``feature_sets`` holds each distinct list of feature
names once, and a decision its values as float64 bytes (``feature_values``) in that list's order. Rows
stored before keep their ``features`` JSON, which the store still reads; nothing is rewritten.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feature_sets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feature_sets"),
        sa.UniqueConstraint("digest", name="uq_feature_sets_digest"),
    )
    with op.batch_alter_table("decisions") as batch:  # SQLite: add column works in place
        batch.add_column(sa.Column("feature_set_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("feature_values", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Back to 0003: packed features are written back as JSON objects first (nothing is lost)."""
    import json

    import numpy as np

    conn = op.get_bind()
    names = {
        r.id: r.names if isinstance(r.names, list) else json.loads(r.names)
        for r in conn.execute(sa.text("SELECT id, names FROM feature_sets"))
    }
    rows = conn.execute(
        sa.text("SELECT id, feature_set_id, feature_values FROM decisions WHERE feature_set_id IS NOT NULL")
    ).all()
    for r in rows:
        values = np.frombuffer(bytes(r.feature_values), dtype="<f8").tolist()
        features = {n: v for n, v in zip(names[r.feature_set_id], values) if v == v}
        conn.execute(sa.text("UPDATE decisions SET features = :f WHERE id = :id"), {"f": json.dumps(features), "id": r.id})
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("feature_values")
        batch.drop_column("feature_set_id")
    op.drop_table("feature_sets")
