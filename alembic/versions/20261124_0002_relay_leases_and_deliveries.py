"""relay leases and per-subscriber deliveries"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("outbox", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.create_table(
        "outbox_deliveries",
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("subscriber", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_reason", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "errors", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["event_seq"], ["outbox.seq"], name=op.f("fk_outbox_deliveries_event_seq_outbox"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("event_seq", "subscriber", name=op.f("pk_outbox_deliveries")),
    )


def downgrade() -> None:
    op.drop_table("outbox_deliveries")
    op.drop_column("outbox", "claimed_by")
