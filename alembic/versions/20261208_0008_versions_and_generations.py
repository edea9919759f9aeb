"""Documents change: content versions, build rows (replace / reindex), per-KB index generations

See docs/documents-change.md for the model and why. Build rows are hidden ``documents`` rows
(``parent_id`` + ``purpose``); ``served_by`` names the row whose points answer search for a
document; ``document_version_seq`` makes every lease version unique across a document's builds.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from shared.migration_ddl import foreign_key, partial_index, timestamp

revision = "0008"
down_revision = "0007"

LIVE_USER_DOC = "deleted_at IS NULL AND parent_id IS NULL"


def _unique_names_and_contents_among(where: str) -> None:
    """Rebuild the per-KB unique filename and sha256 indexes over the documents ``where`` matches."""
    for name, column in (("uq_documents_live_filename", "filename"), ("uq_documents_live_sha256", "sha256")):
        op.drop_index(name, table_name="documents")
        partial_index(name, "documents", ["knowledge_base_id", column], where, unique=True)


def upgrade() -> None:
    op.execute("CREATE SEQUENCE document_version_seq")
    op.execute("SELECT setval('document_version_seq', COALESCE((SELECT max(version) FROM documents), 0) + 1, false)")

    op.add_column("documents", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column("documents", sa.Column("purpose", sa.Text(), nullable=True))
    op.add_column("documents", sa.Column("content_version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column("documents", sa.Column("generation", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column("documents", sa.Column("served_by", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_documents_parent_id_documents"), "documents", "documents", ["parent_id"], ["id"], ondelete="CASCADE"
    )
    op.create_foreign_key(
        op.f("fk_documents_served_by_documents"), "documents", "documents", ["served_by"], ["id"], ondelete="SET NULL"
    )
    op.create_check_constraint(
        op.f("ck_documents_purpose"),
        "documents",
        "(parent_id IS NULL AND purpose IS NULL) OR (parent_id IS NOT NULL AND purpose IN ('replace', 'reindex'))",
    )
    partial_index("ix_documents_parent", "documents", ["parent_id"], "parent_id IS NOT NULL")
    # Build rows share their document's name and content: only user documents are unique per KB.
    _unique_names_and_contents_among(LIVE_USER_DOC)
    # A re-index build reads its document's file: object keys are no longer one per row.
    op.drop_constraint(op.f("uq_documents_object_key"), "documents", type_="unique")
    op.create_index(op.f("ix_documents_object_key"), "documents", ["object_key"])

    op.add_column(
        "knowledge_bases", sa.Column("active_generation", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.create_table(
        "index_generations",
        sa.Column("knowledge_base_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=True),
        sa.Column("chunk_overlap", sa.Integer(), nullable=True),
        sa.Column("embedding_model", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        timestamp("created_at", default_now=True),
        timestamp("activated_at"),
        timestamp("finished_at"),
        sa.CheckConstraint(
            "state IN ('active', 'building', 'retired', 'cancelled')", name=op.f("ck_index_generations_state")
        ),
        foreign_key("index_generations", "knowledge_base_id", "knowledge_bases.id"),
        sa.PrimaryKeyConstraint("knowledge_base_id", "generation", name=op.f("pk_index_generations")),
    )
    partial_index(
        "uq_index_generations_building", "index_generations", ["knowledge_base_id"], "state = 'building'", unique=True
    )
    op.execute(
        "INSERT INTO index_generations (knowledge_base_id, generation, state, activated_at) "
        "SELECT id, 1, 'active', created_at FROM knowledge_bases"
    )

    op.create_table(
        "document_versions",
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.Text(), nullable=False),
        sa.Column("original_filename", sa.Text(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("build_id", sa.Uuid(), nullable=True),
        timestamp("created_at", default_now=True),
        timestamp("activated_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'failed', 'superseded', 'retained', 'purged')",
            name=op.f("ck_document_versions_status"),
        ),
        foreign_key("document_versions", "document_id", "documents.id"),
        sa.PrimaryKeyConstraint("document_id", "version", name=op.f("pk_document_versions")),
    )
    op.create_index(op.f("ix_document_versions_object_key"), "document_versions", ["object_key"])
    op.execute(
        """
        INSERT INTO document_versions (document_id, version, sha256, size_bytes, media_type, original_filename,
            object_key, status, error, build_id, created_at, activated_at)
        SELECT id, 1, sha256, size_bytes, media_type, original_filename, object_key,
            CASE status WHEN 'ready' THEN 'active' WHEN 'failed' THEN 'failed'
                        WHEN 'deleting' THEN 'superseded' ELSE 'pending' END,
            error, id, created_at, CASE WHEN status = 'ready' THEN processed_at END
        FROM documents WHERE deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_document_versions_object_key"), table_name="document_versions")
    op.drop_table("document_versions")
    op.drop_index("uq_index_generations_building", table_name="index_generations")
    op.drop_table("index_generations")
    op.drop_column("knowledge_bases", "active_generation")
    op.execute("DELETE FROM documents WHERE parent_id IS NOT NULL")
    op.drop_index(op.f("ix_documents_object_key"), table_name="documents")
    op.create_unique_constraint(op.f("uq_documents_object_key"), "documents", ["object_key"])
    _unique_names_and_contents_among("deleted_at IS NULL")
    op.drop_index("ix_documents_parent", table_name="documents")
    op.drop_constraint(op.f("ck_documents_purpose"), "documents", type_="check")
    op.drop_constraint(op.f("fk_documents_served_by_documents"), "documents", type_="foreignkey")
    op.drop_constraint(op.f("fk_documents_parent_id_documents"), "documents", type_="foreignkey")
    for column in ("served_by", "generation", "content_version", "purpose", "parent_id"):
        op.drop_column("documents", column)
    op.execute("DROP SEQUENCE document_version_seq")
