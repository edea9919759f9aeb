"""index_generations.points_purged_at: when the reconciler deleted a dropped generation's points

A generation that can no longer be rolled back to (retired, and not the most recently retired one of
its knowledge base) has its points deleted by the reconciler (services/reconciler/generation_purge.py);
this column records that it was done, so each generation is purged once.
"""

from __future__ import annotations

from alembic import op
from shared.migration_ddl import timestamp

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.add_column("index_generations", timestamp("points_purged_at"))


def downgrade() -> None:
    op.drop_column("index_generations", "points_purged_at")
