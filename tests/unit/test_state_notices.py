"""The state channel's payloads: one model per kind, the same JSON the SSE stream always sent."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from shared import state_notices
from shared.state_notices import DocumentNotice, KnowledgeBaseNotice


def test_a_document_notice_is_the_streams_json_and_parses_back() -> None:
    notice = DocumentNotice(
        event_id=str(uuid.uuid4()),
        type="document.stage_changed",
        document_id=str(uuid.uuid4()),
        knowledge_base_id=str(uuid.uuid4()),
        status="processing",
        stage="embedding",
        version=7,
        updated_at="2026-12-05T13:00:00.123456+00:00",
    )
    payload = state_notices.to_json(notice)
    # The field order and spacing the stream sent before the model (json.dumps of the dict).
    assert payload == json.dumps(
        {k: getattr(notice, k) for k in ("event_id", "type", "document_id", "knowledge_base_id")}
        | {"status": "processing", "stage": "embedding", "version": 7, "updated_at": notice.updated_at}
    )
    assert state_notices.parse(payload) == notice


def test_a_knowledge_base_notice_parses_back_to_its_kind() -> None:
    notice = KnowledgeBaseNotice(knowledge_base_id=str(uuid.uuid4()), change="index.switched", index={"generation": 2})
    payload = state_notices.to_json(notice)
    assert json.loads(payload)["kind"] == "knowledge_base"
    assert state_notices.parse(payload) == notice


def test_a_replayed_envelope_gives_the_live_shape() -> None:
    data = {"document_id": "d", "knowledge_base_id": "k", "version": 3, "status": "deleted", "stage": None}
    envelope = {"id": "e", "type": "document.deleted", "time": "2026-12-05T13:00:00Z", "data": data}
    notice = DocumentNotice.from_envelope(envelope)
    assert (notice.event_id, notice.status, notice.updated_at) == ("e", "deleted", "2026-12-05T13:00:00Z")


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        json.dumps({"knowledge_base_id": "k"}),
        json.dumps({"kind": "knowledge_base", "knowledge_base_id": "k", "change": "index.exploded", "index": None}),
    ],
)
def test_a_payload_of_neither_shape_is_refused(payload: str) -> None:
    with pytest.raises(ValidationError):
        state_notices.parse(payload)
