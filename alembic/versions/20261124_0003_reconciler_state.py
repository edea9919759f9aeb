"""reconciler state, pipeline alert first-seen times, retention indexes"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from shared.migration_ddl import timestamp

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "reconciler_state",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("leader_id", sa.Text(), nullable=False),
        timestamp("leader_since", default_now=True),
        timestamp("pass_started_at"),
        timestamp("pass_finished_at"),
        sa.Column("passes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "counts", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_reconciler_state")),
    )
    op.create_table(
        "pipeline_alerts",
        sa.Column("code", sa.Text(), nullable=False),
        timestamp("since", default_now=True),
        timestamp("last_seen_at", default_now=True),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_pipeline_alerts")),
    )
    op.create_index("ix_outbox_aggregate_created", "outbox", ["aggregate_id", "created_at"], unique=False)
    op.create_index("ix_processor_inbox_received_at", "processor_inbox", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_processor_inbox_received_at", table_name="processor_inbox")
    op.drop_index("ix_outbox_aggregate_created", table_name="outbox")
    op.drop_table("pipeline_alerts")
    op.drop_table("reconciler_state")
