"""Event types, the CloudEvents 1.0 envelope, and the JSON Schema every emitted event matches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from shared.vocabulary import EVENT_STATUSES, STAGES, BuildPurpose

EventType = Literal[
    "document.uploaded",
    "document.stage_changed",
    "document.retry_scheduled",
    "document.requeued",
    "document.indexed",
    "document.failed",
    "document.delete_requested",
    "document.deleted",
    "document.version_created",
    "document.version_activated",
    "document.version_failed",
    "knowledge_base.deleted",
]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
# The events that put a document in the queue: to a processor they are wake-ups (it pulls in dispatch order).
# ``document.version_created`` queues new content (a replacement's build row, or the document itself).
WORK_EVENT_TYPES: Final[frozenset[EventType]] = frozenset(
    {"document.uploaded", "document.requeued", "document.retry_scheduled", "document.version_created"}
)
# A build row's events (docs/documents-change.md), per purpose: the row event → the event emitted for its
# document; an event not listed is not emitted (stage changes, retries, requeues of a build stay internal,
# and a re-index build emits nothing at all).
BUILD_EVENT_TYPES: Final[dict[BuildPurpose, dict[EventType, EventType]]] = {
    "replace": {
        "document.uploaded": "document.version_created",
        "document.indexed": "document.version_activated",
        "document.failed": "document.version_failed",
    },
    "reindex": {},
}
VERSION_EVENT_TYPES: Final[frozenset[EventType]] = frozenset(
    {"document.version_created", "document.version_activated", "document.version_failed"}
)

SPECVERSION: Final = "1.0"
NOTIFY_CHANNEL: Final = "kbingest_outbox"
STATE_CHANNEL: Final = "kbingest_documents"


def envelope(
    *,
    event_id: uuid.UUID,
    event_type: EventType,
    source: str,
    subject: uuid.UUID,
    data: dict[str, Any],
    time: datetime | None = None,
) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON envelope; ``id`` is the consumers' dedup key."""
    return {
        "specversion": SPECVERSION,
        "id": str(event_id),
        "type": event_type,
        "source": source,
        "subject": str(subject),
        "time": (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


_ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["code", "message", "retryable"],
    "properties": {
        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "message": {"type": "string"},
        "retryable": {"type": "boolean"},
        "cause": {"type": "object"},
    },
}

_DOCUMENT_DATA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["document_id", "knowledge_base_id", "version", "status"],
    "properties": {
        "document_id": {"type": "string", "format": "uuid"},
        "knowledge_base_id": {"type": "string", "format": "uuid"},
        "version": {"type": "integer", "minimum": 0},
        "status": {"enum": list(EVENT_STATUSES)},
        "stage": {"enum": [None, *STAGES]},
        "filename": {"type": "string"},
        "media_type": {"type": "string"},
        "size_bytes": {"type": "integer"},
        "sha256": {"type": "string"},
        "attempts": {"type": "integer"},
        "chunk_count": {"type": ["integer", "null"]},
        "error": {"oneOf": [{"type": "null"}, _ERROR_SCHEMA]},
        # Version events: the content version concerned, and the row that processes it (the document's
        # own id for its first content, or a replacement's build row).
        "content_version": {"type": "integer", "minimum": 1},
        "build_id": {"type": "string", "format": "uuid"},
        # document.version_activated: the row that served before (its points are purged after commit).
        "previous_build_id": {"type": "string", "format": "uuid"},
    },
}

_REQUIRED_DATA_EXTRA: Final[dict[EventType, list[str]]] = {
    "document.uploaded": ["filename", "media_type", "size_bytes", "sha256"],
    "document.stage_changed": ["stage"],
    "document.retry_scheduled": ["error"],
    "document.failed": ["error"],
    "document.indexed": ["chunk_count"],
    "document.version_created": ["content_version", "build_id", "sha256"],
    "document.version_activated": ["content_version", "build_id", "chunk_count"],
    "document.version_failed": ["content_version", "build_id", "error"],
}


def event_schema(event_type: EventType) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event type's envelope."""
    data = dict(_DOCUMENT_DATA)
    data["required"] = [*_DOCUMENT_DATA["required"], *_REQUIRED_DATA_EXTRA.get(event_type, [])]
    if event_type == "knowledge_base.deleted":
        data = {
            "type": "object",
            "required": ["knowledge_base_id", "status"],
            "properties": {"knowledge_base_id": {"type": "string"}, "status": {"const": "deleted"}},
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": event_type,
        "type": "object",
        "required": ["specversion", "id", "type", "source", "subject", "time", "datacontenttype", "data"],
        "properties": {
            "specversion": {"const": SPECVERSION},
            "id": {"type": "string", "format": "uuid"},
            "type": {"const": event_type},
            "source": {"type": "string", "pattern": "^kbingest/"},
            "subject": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "data": data,
        },
    }
