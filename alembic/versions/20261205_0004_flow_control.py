"""flow control: per-KB round-robin key for fair dispatch, pipeline samples for the health charts"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from shared.migration_ddl import timestamp

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("knowledge_bases", timestamp("last_dispatched_at"))
    op.create_table(
        "pipeline_samples",
        timestamp("at", default_now=True),
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
