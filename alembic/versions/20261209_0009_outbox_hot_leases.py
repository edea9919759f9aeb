"""outbox.leased_until and fillfactor 50: the relay's claim becomes a HOT update (no index entries)

A claim used to push ``available_at`` (a column of ix_outbox_pending) forward by the lease, so every
claimed event was a non-HOT update that added entries to five indexes. The lease now lives in its own
column that no index or index predicate mentions, and pages keep half their room for the claim's new
row versions: a claim touches no index at all (see docs/benchmarks.md, Relay).
"""

from __future__ import annotations

from alembic import op
from shared.migration_ddl import timestamp

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.add_column("outbox", timestamp("leased_until"))
    # Applies to pages filled from now on; existing rows keep their pages (a claim of them is not HOT).
    op.execute("ALTER TABLE outbox SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox RESET (fillfactor)")
    op.drop_column("outbox", "leased_until")
