"""reconciler_state.sweep_after: where the paged orphan sweep resumes on its next pass

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reconciler_state", sa.Column("sweep_after", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("reconciler_state", "sweep_after")
