"""Event ``data`` models: the JSON they emit matches the published JSON Schemas, field for field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from shared.event_data import DocumentEventData, KnowledgeBaseDeletedData, ReceivedEvent
from shared.events import EVENT_TYPES, EventType, envelope, event_schema

DOCUMENT = {
    "id": uuid.uuid4(),
    "knowledge_base_id": uuid.uuid4(),
    "version": 4,
    "deleted_at": None,
    "status": "failed",
    "stage": "embedding",
    "filename": "a.txt",
    "media_type": "text/plain",
    "size_bytes": 12,
    "sha256": "0" * 64,
    "attempts": 2,
    "chunk_count": None,
    "error": {"code": "embed_timeout", "message": "slow", "retryable": True},
}
BUILD = DOCUMENT | {"id": uuid.uuid4(), "content_version": 2, "sha256": "1" * 64, "size_bytes": 30}


def _validate(event_type: EventType, data: dict[str, Any]) -> None:
    body = envelope(
        event_id=uuid.uuid4(),
        event_type=event_type,
        source="kbingest/test",
        subject=uuid.uuid4(),
        data=data,
        time=datetime.now(UTC),
    )
    jsonschema.validate(body, event_schema(event_type), format_checker=jsonschema.FormatChecker())


def test_the_model_and_the_schema_name_the_same_fields() -> None:
    schema = event_schema("document.version_activated")["properties"]["data"]
    assert list(DocumentEventData.model_fields) == list(schema["properties"])


@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t != "knowledge_base.deleted"])
def test_every_document_event_validates(event_type: EventType) -> None:
    data = DocumentEventData.of_document(DOCUMENT)  # type: ignore[arg-type]  # a row's mapping
    data = data.with_version(BUILD).model_copy(update={"previous_build_id": uuid.uuid4(), "chunk_count": 3})  # type: ignore[arg-type]
    _validate(event_type, data.to_json())


def test_a_document_event_has_its_nulls_and_no_version_fields() -> None:
    data = DocumentEventData.of_document(DOCUMENT | {"deleted_at": datetime.now(UTC)}).to_json()  # type: ignore[arg-type]
    assert data["status"] == "deleted" and data["chunk_count"] is None and "stage" in data
    assert not {"content_version", "build_id", "previous_build_id"} & set(data)
    assert data["document_id"] == str(DOCUMENT["id"])


def test_a_version_event_speaks_of_the_builds_content() -> None:
    data = DocumentEventData.of_document(DOCUMENT).with_version(BUILD).to_json()  # type: ignore[arg-type]
    assert (data["content_version"], data["build_id"], data["sha256"]) == (2, str(BUILD["id"]), "1" * 64)
    assert "previous_build_id" not in data


def test_knowledge_base_deleted_validates() -> None:
    _validate("knowledge_base.deleted", KnowledgeBaseDeletedData(knowledge_base_id=uuid.uuid4(), documents=3).to_json())


def test_a_subscriber_reads_ids_and_ignores_what_it_does_not_know() -> None:
    doc = uuid.uuid4()
    event = ReceivedEvent.model_validate_json(
        f'{{"id": "{uuid.uuid4()}", "type": "document.future", "data": {{"document_id": "{doc}", "new": 1}}}}'
    )
    assert (event.type, event.data.document_id, event.data.knowledge_base_id) == ("document.future", doc, None)
