"""flow control: per-KB round-robin key for fair dispatch, pipeline samples for the health charts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 09:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("knowledge_bases", sa.Column("last_dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "pipeline_samples",
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("queued_due", sa.Integer(), nullable=False),
        sa.Column("processing", sa.Integer(), nullable=False),
        sa.Column("slots_total", sa.Integer(), nullable=False),
        sa.Column("slots_busy", sa.Integer(), nullable=False),
        sa.Column("drain_rate_per_min", sa.Float(), nullable=False),
        sa.Column("utilization", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("at", name=op.f("pk_pipeline_samples")),
    )


def downgrade() -> None:
    op.drop_table("pipeline_samples")
    op.drop_column("knowledge_bases", "last_dispatched_at")
