"""document_attempts by start and end time: the pipeline's drain rate, utilization and queue_stalled reads

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_document_attempts_started_at", "document_attempts", ["started_at"], unique=False)
    op.create_index("ix_document_attempts_finished_at", "document_attempts", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_document_attempts_finished_at", table_name="document_attempts")
    op.drop_index("ix_document_attempts_started_at", table_name="document_attempts")
