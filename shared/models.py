"""The whole schema as SQLAlchemy models; alembic migrations must match (``alembic check``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.vocabulary import BUILD_PURPOSES, GENERATION_STATES, PRIORITIES, STAGES, STATUSES, VERSION_STATUSES, sql_in

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# User documents (not build rows) that are not deleted: the scope of the per-KB unique names and contents.
LIVE_USER_DOCUMENT = "deleted_at IS NULL AND parent_id IS NULL"

NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


def _ts(*, nullable: bool = False, default_now: bool = False) -> Mapped[Any]:
    return mapped_column(DateTime(timezone=True), nullable=nullable, server_default=NOW if default_now else None)


class KnowledgeBase(Base):
    __tablename__ = "knowledge_bases"
    __table_args__ = (
        Index(
            "uq_knowledge_bases_live_name",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(default_now=True)
    updated_at: Mapped[datetime] = _ts(default_now=True)
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)
    # When a processor last took one of this KB's documents: the round-robin key of fair dispatch.
    last_dispatched_at: Mapped[datetime | None] = _ts(nullable=True)
    # The index generation search uses (index_generations); docs/documents-change.md.
    active_generation: Mapped[int] = mapped_column(Integer, server_default=text("1"))


class IndexGeneration(Base):
    """One index build of a knowledge base with its settings (NULL: the server's default)."""

    __tablename__ = "index_generations"
    __table_args__ = (
        CheckConstraint(sql_in("state", GENERATION_STATES), name="state"),
        Index(
            "uq_index_generations_building",
            "knowledge_base_id",
            unique=True,
            postgresql_where=text("state = 'building'"),
        ),
    )

    knowledge_base_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    chunk_overlap: Mapped[int | None] = mapped_column(Integer)
    embedding_model: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text)
    total: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _ts(default_now=True)
    activated_at: Mapped[datetime | None] = _ts(nullable=True)
    finished_at: Mapped[datetime | None] = _ts(nullable=True)
    # When the reconciler deleted the points of this generation, dropped (no rollback returns to it).
    points_purged_at: Mapped[datetime | None] = _ts(nullable=True)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    knowledge_base_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _ts(default_now=True)
    cancelled_at: Mapped[datetime | None] = _ts(nullable=True)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint(sql_in("status", STATUSES), name="status"),
        CheckConstraint(f"stage IS NULL OR {sql_in('stage', STAGES)}", name="stage"),
        CheckConstraint(sql_in("priority", PRIORITIES), name="priority"),
        CheckConstraint(
            "(parent_id IS NULL AND purpose IS NULL) OR "
            f"(parent_id IS NOT NULL AND {sql_in('purpose', BUILD_PURPOSES)})",
            name="purpose",
        ),
        Index(
            "uq_documents_live_filename",
            "knowledge_base_id",
            "filename",
            unique=True,
            postgresql_where=text(LIVE_USER_DOCUMENT),
        ),
        Index(
            "uq_documents_live_sha256",
            "knowledge_base_id",
            "sha256",
            unique=True,
            postgresql_where=text(LIVE_USER_DOCUMENT),
        ),
        Index("ix_documents_parent", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
        # Reconciler: processing documents by heartbeat age (stale scan).
        Index(
            "ix_documents_processing_heartbeat",
            "heartbeat_at",
            postgresql_where=text("status = 'processing'"),
        ),
        # Reconciler and pipeline: queued documents by age (lost dispatch, oldest queued).
        Index(
            "ix_documents_queued_available",
            "available_at",
            postgresql_where=text("status = 'queued'"),
        ),
        Index("ix_documents_kb_created", "knowledge_base_id", "created_at", "id"),
        Index("ix_documents_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    knowledge_base_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    filename: Mapped[str] = mapped_column(Text)
    original_filename: Mapped[str] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(Text)
    # The active version's file; a re-index build reads its document's file, so keys repeat.
    object_key: Mapped[str] = mapped_column(Text, index=True)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    stage: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(Text, server_default=text("'normal'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    chunk_count: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_epoch: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    available_at: Mapped[datetime] = _ts(default_now=True)
    created_at: Mapped[datetime] = _ts(default_now=True)
    updated_at: Mapped[datetime] = _ts(default_now=True)
    heartbeat_at: Mapped[datetime | None] = _ts(nullable=True)
    processed_at: Mapped[datetime | None] = _ts(nullable=True)
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)
    # Build rows (docs/documents-change.md): a hidden row that processes a replacement or a re-index
    # of the user document ``parent_id``; NULL on user documents.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    purpose: Mapped[str | None] = mapped_column(Text)
    # The content version this row processes (user documents: the active one).
    content_version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # The index generation this row's points belong to.
    generation: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # The row whose points answer search for this document (NULL: the row itself).
    served_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("documents.id", ondelete="SET NULL"))


class DocumentVersion(Base):
    """One uploaded content of a document: 1 at upload, +1 per replacement."""

    __tablename__ = "document_versions"
    __table_args__ = (CheckConstraint(sql_in("status", VERSION_STATUSES), name="status"),)

    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(Text)
    original_filename: Mapped[str] = mapped_column(Text)
    # The orphan sweep keeps every key a version still references.
    object_key: Mapped[str] = mapped_column(Text, index=True)
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The row that processes (processed) this version: the document itself or a ``replace`` build.
    build_id: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = _ts(default_now=True)
    activated_at: Mapped[datetime | None] = _ts(nullable=True)


class DocumentAttempt(Base):
    """One row per processing attempt, with how it ended and why."""

    __tablename__ = "document_attempts"
    __table_args__ = (
        Index("ix_document_attempts_document", "document_id", "attempt"),
        # Pipeline flow (shared/flow.py): the last start, attempts ended or open within the window.
        Index("ix_document_attempts_started_at", "started_at"),
        Index("ix_document_attempts_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    lease_epoch: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = _ts(default_now=True)
    finished_at: Mapped[datetime | None] = _ts(nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Outbox(Base):
    """Events to deliver; ``seq`` orders them, ``id`` is the CloudEvents id (dedup key)."""

    __tablename__ = "outbox"
    __table_args__ = (
        # Relay claim: due, undelivered, not dead, oldest first.
        Index(
            "ix_outbox_pending",
            "available_at",
            "seq",
            postgresql_where=text("delivered_at IS NULL AND dead_at IS NULL"),
        ),
        # Relay per-aggregate ordering check: earlier undelivered event of the same aggregate.
        Index(
            "ix_outbox_pending_aggregate",
            "aggregate_id",
            "seq",
            postgresql_where=text("delivered_at IS NULL AND dead_at IS NULL"),
        ),
        Index("ix_outbox_dead", "dead_at", postgresql_where=text("dead_at IS NOT NULL")),
        Index("ix_outbox_delivered", "delivered_at", postgresql_where=text("delivered_at IS NOT NULL")),
        # Reconciler lost-dispatch check: any pending or recent event of one aggregate.
        Index("ix_outbox_aggregate_created", "aggregate_id", "created_at"),
        # Half of each page stays free for the relay claim's new row versions, so the claim (which
        # touches no indexed column) is a HOT update: no index entries (migration 0009).
        {"postgresql_with": {"fillfactor": 50}},
    )

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True)
    type: Mapped[str] = mapped_column(Text)
    aggregate_type: Mapped[str] = mapped_column(Text)
    aggregate_id: Mapped[uuid.UUID] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _ts(default_now=True)
    available_at: Mapped[datetime] = _ts(default_now=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    delivered_at: Mapped[datetime | None] = _ts(nullable=True)
    dead_at: Mapped[datetime | None] = _ts(nullable=True)
    dead_reason: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    errors: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    # Relay lease: the claiming relay's id (NULL when free) and when its lease runs out. Deliberately in
    # no index or index predicate: a claim that changes only unindexed columns is a HOT update.
    claimed_by: Mapped[str | None] = mapped_column(Text)
    leased_until: Mapped[datetime | None] = _ts(nullable=True)


class OutboxDelivery(Base):
    """Per-subscriber delivery state of an event routed to several subscribers."""

    __tablename__ = "outbox_deliveries"

    event_seq: Mapped[int] = mapped_column(BigInteger, ForeignKey("outbox.seq", ondelete="CASCADE"), primary_key=True)
    subscriber: Mapped[str] = mapped_column(Text, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    available_at: Mapped[datetime] = _ts(default_now=True)
    delivered_at: Mapped[datetime | None] = _ts(nullable=True)
    dead_at: Mapped[datetime | None] = _ts(nullable=True)
    dead_reason: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    errors: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))


class ProcessorInbox(Base):
    """Event ids a processor accepted: the dedup key of at-least-once delivery."""

    __tablename__ = "processor_inbox"
    # Reconciler: prune rows older than the retention in batches.
    __table_args__ = (Index("ix_processor_inbox_received_at", "received_at"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    document_id: Mapped[uuid.UUID | None] = mapped_column()
    received_at: Mapped[datetime] = _ts(default_now=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    knowledge_base_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(UUID(as_uuid=True)))
    created_at: Mapped[datetime] = _ts(default_now=True)
    revoked_at: Mapped[datetime | None] = _ts(nullable=True)
    last_used_at: Mapped[datetime | None] = _ts(nullable=True)


class IdempotencyKey(Base):
    """First response to an ``Idempotency-Key`` upload, replayed on repeats."""

    __tablename__ = "idempotency_keys"
    # Keyed uploads prune keys past the retention, oldest first.
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _ts(default_now=True)


class Processor(Base):
    """Processors register here and heartbeat, so 'no processor alive' is visible."""

    __tablename__ = "processors"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _ts(default_now=True)
    ready_at: Mapped[datetime | None] = _ts(nullable=True)
    last_seen: Mapped[datetime] = _ts(default_now=True)
    stopped_at: Mapped[datetime | None] = _ts(nullable=True)


class ReconcilerState(Base):
    """The acting reconciler's last completed pass, so any API replica can tell it runs."""

    __tablename__ = "reconciler_state"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    leader_id: Mapped[str] = mapped_column(Text)
    leader_since: Mapped[datetime] = _ts(default_now=True)
    pass_started_at: Mapped[datetime | None] = _ts(nullable=True)
    pass_finished_at: Mapped[datetime | None] = _ts(nullable=True)
    passes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # The last object key the orphan sweep handled; NULL: the next sweep starts at the bucket's beginning.
    sweep_after: Mapped[str | None] = mapped_column(Text, nullable=True)


class PipelineAlert(Base):
    """When each active pipeline alert was first seen (kept by the reconciler; cleared codes are deleted)."""

    __tablename__ = "pipeline_alerts"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    since: Mapped[datetime] = _ts(default_now=True)
    last_seen_at: Mapped[datetime] = _ts(default_now=True)


class PipelineSample(Base):
    """One reconciler pass's view of the flow (queue depth, slots, drain rate): the health page's charts."""

    __tablename__ = "pipeline_samples"

    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True, server_default=NOW)
    queued: Mapped[int] = mapped_column(Integer)
    queued_due: Mapped[int] = mapped_column(Integer)
    processing: Mapped[int] = mapped_column(Integer)
    slots_total: Mapped[int] = mapped_column(Integer)
    slots_busy: Mapped[int] = mapped_column(Integer)
    drain_rate_per_min: Mapped[float] = mapped_column(Float)
    utilization: Mapped[float | None] = mapped_column(Float, nullable=True)
