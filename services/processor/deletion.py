"""Deleting a document: points, then the object, then the tombstone (idempotent at every step).

The delete event is recorded in the inbox in the same transaction as the tombstone: a purge that
failed half-way leaves no record, so the redelivery purges again instead of being answered
"duplicate" for work that never happened.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

import structlog
from sqlalchemy import text

from shared import lifecycle
from shared.db import Database, DatabaseUnavailable
from shared.errors import ProcessingError
from shared.storage import ObjectStore, StorageUnavailable
from shared.subscriber import record_once
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor.deletion")

FIND_DELETING: Final = text(
    "SELECT id, object_key FROM documents WHERE id = :id AND status = 'deleting' AND deleted_at IS NULL"
)

# An inbox row exists only once its event's effect committed (see the module docstring).
ALREADY_HANDLED: Final = text("SELECT 1 FROM processor_inbox WHERE event_id = :event_id")

PurgeResult = Literal["deleted", "noop", "duplicate"]


class PurgeFailed(Exception):
    """A store the purge needs is unavailable; nothing was recorded, so a redelivery purges again."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def purge_document(
    db: Database,
    store: ObjectStore,
    vectors: VectorStore,
    *,
    event_id: uuid.UUID,
    event_type: str,
    document_id: uuid.UUID,
) -> PurgeResult:
    """Remove everything of a ``deleting`` document, then record the event with the tombstone.

    A repeat of a handled event is ``duplicate``; a gone or already tombstoned document is ``noop``.
    """
    try:
        return await _purge(db, store, vectors, event_id=event_id, event_type=event_type, document_id=document_id)
    except ProcessingError as exc:
        raise PurgeFailed(exc.code.value, exc.message) from exc
    except StorageUnavailable as exc:
        raise PurgeFailed("storage_unavailable", str(exc)) from exc
    except DatabaseUnavailable as exc:
        raise PurgeFailed("database_unavailable", str(exc)) from exc


async def _purge(
    db: Database,
    store: ObjectStore,
    vectors: VectorStore,
    *,
    event_id: uuid.UUID,
    event_type: str,
    document_id: uuid.UUID,
) -> PurgeResult:
    async with db.transaction() as conn:
        if (await conn.execute(ALREADY_HANDLED, {"event_id": event_id})).first() is not None:
            return "duplicate"
        row = (await conn.execute(FIND_DELETING, {"id": document_id})).mappings().one_or_none()
    if row is not None:
        await vectors.delete_document(document_id)
        await store.delete(row["object_key"])
    async with db.transaction() as conn:
        if not await record_once(conn, event_id, event_type, document_id):
            return "duplicate"  # a concurrent delivery of the same event committed first
        finished = row is not None and await lifecycle.finish_delete(conn, document_id)
    log.info("document.deleted", document_id=str(document_id), finished=finished)
    return "deleted" if finished else "noop"
