"""The ``data`` of the events kbingest emits, and what a subscriber reads of a received envelope.

The emitters (shared/lifecycle.py, the KB delete route) build these models; the processor's event
receiver parses ``ReceivedEvent``. shared/events.py's JSON Schemas describe the same fields
(tests/unit/test_event_data.py checks that the two agree).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import RowMapping

from shared.vocabulary import EventStatus, Stage


class DocumentEventData(BaseModel):
    """A document event's ``data``: ids, version, status and what changed (docs/events.md)."""

    model_config = ConfigDict(extra="forbid")

    document_id: uuid.UUID
    knowledge_base_id: uuid.UUID
    version: int = Field(ge=0)
    status: EventStatus
    stage: Stage | None
    filename: str
    media_type: str
    size_bytes: int
    sha256: str
    attempts: int
    chunk_count: int | None
    # DocumentError.to_json() as the row stores it.
    error: dict[str, Any] | None
    # Version events only (absent from the JSON otherwise): the content version concerned and the row
    # that processes it (the document's own id for its first content, or a replacement's build row).
    content_version: int | None = Field(default=None, ge=1)
    build_id: uuid.UUID | None = None
    # document.version_activated: the row that served before (its points are purged after commit).
    previous_build_id: uuid.UUID | None = None

    @classmethod
    def of_document(cls, row: RowMapping) -> DocumentEventData:
        """The document's side of the data, from its row (``deleted`` once it is a tombstone)."""
        return cls(
            document_id=row["id"],
            knowledge_base_id=row["knowledge_base_id"],
            version=row["version"],
            status="deleted" if row["deleted_at"] is not None else row["status"],
            stage=row["stage"],
            filename=row["filename"],
            media_type=row["media_type"],
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            attempts=row["attempts"],
            chunk_count=row["chunk_count"],
            error=row["error"],
        )

    def with_version(self, build: RowMapping) -> DocumentEventData:
        """What a version event adds: the version's number, its build and the build's content."""
        return self.model_copy(
            update={
                "content_version": build["content_version"],
                "build_id": build["id"],
                "sha256": build["sha256"],
                "size_bytes": build["size_bytes"],
                "media_type": build["media_type"],
            }
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON ``data``: every document field (nulls included), the version fields only when set."""
        return self.model_dump(mode="json", exclude_unset=True)


class KnowledgeBaseDeletedData(BaseModel):
    """``knowledge_base.deleted``: the processor purges the KB's points by its id."""

    knowledge_base_id: uuid.UUID
    status: Literal["deleted"] = "deleted"
    # How many live documents the delete requested (informational).
    documents: int

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ReceivedData(BaseModel):
    """What a subscriber needs of any event's ``data``; other fields are ignored (newer emitters add some)."""

    document_id: uuid.UUID | None = None
    knowledge_base_id: uuid.UUID | None = None


class ReceivedEvent(BaseModel):
    """A delivered CloudEvents envelope as a subscriber reads it: the dedup id, the type, the ids."""

    id: uuid.UUID
    # Not EventType: a subscriber answers an unknown type "ignored", not "malformed".
    type: str
    data: ReceivedData = ReceivedData()
