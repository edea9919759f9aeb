"""The payloads of the document state channel (``STATE_CHANNEL``): written by shared/lifecycle.py and
shared/generations.py in the transaction of a change, read by the API's SSE broadcaster.

The SSE stream sends them as they are (``event: document`` / ``event: knowledge_base``), so their JSON
is the stream's contract (docs/events.md): field names and order stay as they are here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from shared.events import EventType
from shared.vocabulary import EventStatus, Stage

IndexChange = Literal["index.progress", "index.switched", "index.cancelled", "index.rolled_back"]


class DocumentNotice(BaseModel):
    """A document event as the stream shows it; rebuilt from the stored envelope when replaying."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: EventType
    document_id: str
    knowledge_base_id: str
    status: EventStatus
    stage: Stage | None
    version: int
    # As written (ISO 8601): the live notice has the row's time, a replayed one the envelope's.
    updated_at: str | None

    @classmethod
    def from_envelope(cls, payload: dict[str, Any]) -> DocumentNotice:
        """The live notice's shape, rebuilt from a stored CloudEvents envelope."""
        data = payload["data"]
        return cls(
            event_id=payload["id"],
            type=payload["type"],
            document_id=data["document_id"],
            knowledge_base_id=data["knowledge_base_id"],
            status=data["status"],
            stage=data.get("stage"),
            version=data["version"],
            updated_at=payload["time"],
        )


class KnowledgeBaseNotice(BaseModel):
    """A KB's index made progress or switched (live only, not resumable); ``index`` null for progress."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["knowledge_base"] = "knowledge_base"
    knowledge_base_id: str
    change: IndexChange
    index: dict[str, Any] | None


Notice = DocumentNotice | KnowledgeBaseNotice
_NOTICE: TypeAdapter[Notice] = TypeAdapter(Notice)


def to_json(notice: Notice) -> str:
    """The channel payload and the SSE ``data`` (``json.dumps`` spacing, as the stream always sent)."""
    return json.dumps(notice.model_dump(mode="json"))


def parse(payload: str) -> Notice:
    """A channel payload back to its model (pydantic.ValidationError when it is neither)."""
    return _NOTICE.validate_json(payload)
