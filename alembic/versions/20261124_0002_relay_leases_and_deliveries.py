"""relay leases and per-subscriber deliveries"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from shared.migration_ddl import delivery_outcome, foreign_key, timestamp

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("outbox", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.create_table(
        "outbox_deliveries",
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("subscriber", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        timestamp("available_at", default_now=True),
        *delivery_outcome(),
        foreign_key("outbox_deliveries", "event_seq", "outbox.seq"),
        sa.PrimaryKeyConstraint("event_seq", "subscriber", name=op.f("pk_outbox_deliveries")),
    )


def downgrade() -> None:
    op.drop_table("outbox_deliveries")
    op.drop_column("outbox", "claimed_by")
