"""Purging a deleted knowledge base's points by its id, on ``knowledge_base.deleted``.

Each document of the KB is purged by its own ``document.delete_requested``; this sweep by KB id also
takes every point no document purge knows of (whatever wrote it, under whichever document id). Like
the document purge, the event is recorded in the inbox only once the points are gone.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

import structlog
from sqlalchemy import text

from services.processor.deletion import ALREADY_HANDLED, purge_failures
from shared.db import Database
from shared.events import EventType
from shared.inbox import record_once
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor.kb_purge")

KB_DELETED_TYPE: Final[EventType] = "knowledge_base.deleted"

# A KB is purged only once deleted: an event can never empty a live knowledge base.
IS_DELETED: Final = text("SELECT 1 FROM knowledge_bases WHERE id = :id AND deleted_at IS NOT NULL")

KbPurgeResult = Literal["purged", "noop", "duplicate"]


async def purge_knowledge_base(
    db: Database, vectors: VectorStore, *, event_id: uuid.UUID, kb_id: uuid.UUID
) -> KbPurgeResult:
    """Delete every point of deleted KB ``kb_id``; raises ``PurgeFailed`` (nothing recorded) while a store is down."""
    with purge_failures():
        async with db.transaction() as conn:
            if (await conn.execute(ALREADY_HANDLED, {"event_id": event_id})).first() is not None:
                return "duplicate"
            deleted = (await conn.execute(IS_DELETED, {"id": kb_id})).first() is not None
        if deleted:
            await vectors.delete_knowledge_base(kb_id)
        async with db.transaction() as conn:
            if not await record_once(conn, event_id, KB_DELETED_TYPE, None):
                return "duplicate"  # a concurrent delivery of the same event committed first
    log.info("knowledge_base.purged", knowledge_base_id=str(kb_id), purged=deleted)
    return "purged" if deleted else "noop"
