"""reconciler_state.sweep_after: where the paged orphan sweep resumes on its next pass"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("reconciler_state", sa.Column("sweep_after", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("reconciler_state", "sweep_after")
