"""document_attempts by start and end time: the pipeline's drain rate, utilization and queue_stalled reads"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_document_attempts_started_at", "document_attempts", ["started_at"], unique=False)
    op.create_index("ix_document_attempts_finished_at", "document_attempts", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_document_attempts_finished_at", table_name="document_attempts")
    op.drop_index("ix_document_attempts_started_at", table_name="document_attempts")
