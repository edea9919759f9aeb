"""initial schema"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from shared.migration_ddl import delivery_outcome, foreign_key, partial_index, timestamp

revision = "0001"
down_revision = None

LIVE = "deleted_at IS NULL"
UNDELIVERED = "delivered_at IS NULL AND dead_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("knowledge_base_ids", postgresql.ARRAY(sa.UUID()), nullable=True),
        timestamp("created_at", default_now=True),
        timestamp("revoked_at"),
        timestamp("last_used_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        timestamp("created_at", default_now=True),
        timestamp("updated_at", default_now=True),
        timestamp("deleted_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_bases")),
    )
    partial_index("uq_knowledge_bases_live_name", "knowledge_bases", ["name"], LIVE, unique=True)
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("aggregate_type", sa.Text(), nullable=False),
        sa.Column("aggregate_id", sa.UUID(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        timestamp("created_at", default_now=True),
        timestamp("available_at", default_now=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        *delivery_outcome(),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox")),
        sa.UniqueConstraint("id", name=op.f("uq_outbox_id")),
    )
    partial_index("ix_outbox_dead", "outbox", ["dead_at"], "dead_at IS NOT NULL")
    partial_index("ix_outbox_delivered", "outbox", ["delivered_at"], "delivered_at IS NOT NULL")
    partial_index("ix_outbox_pending", "outbox", ["available_at", "seq"], UNDELIVERED)
    partial_index("ix_outbox_pending_aggregate", "outbox", ["aggregate_id", "seq"], UNDELIVERED)
    op.create_table(
        "processor_inbox",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("document_id", sa.UUID(), nullable=True),
        timestamp("received_at", default_now=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processor_inbox")),
    )
    op.create_table(
        "processors",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        timestamp("started_at", default_now=True),
        timestamp("ready_at"),
        timestamp("last_seen", default_now=True),
        timestamp("stopped_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processors")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("knowledge_base_id", sa.UUID(), nullable=False),
        sa.Column("total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        timestamp("created_at", default_now=True),
        timestamp("cancelled_at"),
        foreign_key("batches", "knowledge_base_id", "knowledge_bases.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_knowledge_base_id"), "batches", ["knowledge_base_id"], unique=False)
    op.create_table(
        "idempotency_keys",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        timestamp("created_at", default_now=True),
        foreign_key("idempotency_keys", "api_key_id", "api_keys.id"),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("knowledge_base_id", sa.UUID(), nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=True),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("original_filename", sa.Text(), nullable=False),
        sa.Column("media_type", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("priority", sa.Text(), server_default=sa.text("'normal'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), server_default=sa.text("0"), nullable=False),
        timestamp("available_at", default_now=True),
        timestamp("created_at", default_now=True),
        timestamp("updated_at", default_now=True),
        timestamp("heartbeat_at"),
        timestamp("processed_at"),
        timestamp("deleted_at"),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name=op.f("ck_documents_priority")),
        sa.CheckConstraint(
            "stage IS NULL OR stage IN ('downloading', 'extracting', 'chunking', 'embedding', 'indexing')",
            name=op.f("ck_documents_stage"),
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'ready', 'failed', 'deleting')", name=op.f("ck_documents_status")
        ),
        foreign_key("documents", "batch_id", "batches.id", ondelete="SET NULL"),
        foreign_key("documents", "knowledge_base_id", "knowledge_bases.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint("object_key", name=op.f("uq_documents_object_key")),
    )
    op.create_index(op.f("ix_documents_batch_id"), "documents", ["batch_id"], unique=False)
    op.create_index("ix_documents_kb_created", "documents", ["knowledge_base_id", "created_at", "id"], unique=False)
    partial_index("ix_documents_processing_heartbeat", "documents", ["heartbeat_at"], "status = 'processing'")
    partial_index("ix_documents_queued_available", "documents", ["available_at"], "status = 'queued'")
    op.create_index("ix_documents_status", "documents", ["status"], unique=False)
    partial_index("uq_documents_live_filename", "documents", ["knowledge_base_id", "filename"], LIVE, unique=True)
    partial_index("uq_documents_live_sha256", "documents", ["knowledge_base_id", "sha256"], LIVE, unique=True)
    op.create_table(
        "document_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("document_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        timestamp("started_at", default_now=True),
        timestamp("finished_at"),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        foreign_key("document_attempts", "document_id", "documents.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_document_attempts")),
    )
    op.create_index("ix_document_attempts_document", "document_attempts", ["document_id", "attempt"], unique=False)


def downgrade() -> None:
    # DROP INDEX takes the name only: a partial index's WHERE need not be repeated here.
    op.drop_index("ix_document_attempts_document", table_name="document_attempts")
    op.drop_table("document_attempts")
    for index in (
        "uq_documents_live_sha256",
        "uq_documents_live_filename",
        "ix_documents_status",
        "ix_documents_queued_available",
        "ix_documents_processing_heartbeat",
        "ix_documents_kb_created",
        op.f("ix_documents_batch_id"),
    ):
        op.drop_index(index, table_name="documents")
    op.drop_table("documents")
    op.drop_table("idempotency_keys")
    op.drop_index(op.f("ix_batches_knowledge_base_id"), table_name="batches")
    op.drop_table("batches")
    op.drop_table("processors")
    op.drop_table("processor_inbox")
    for index in ("ix_outbox_pending_aggregate", "ix_outbox_pending", "ix_outbox_delivered", "ix_outbox_dead"):
        op.drop_index(index, table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("uq_knowledge_bases_live_name", table_name="knowledge_bases")
    op.drop_table("knowledge_bases")
    op.drop_table("api_keys")
