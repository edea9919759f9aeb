"""Deleting a document: points, then the object, then the tombstone (idempotent at every step)."""

from __future__ import annotations

import uuid
from typing import Final, Literal

import structlog
from sqlalchemy import text

from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor.deletion")

FIND_DELETING: Final = text(
    "SELECT id, object_key FROM documents WHERE id = :id AND status = 'deleting' AND deleted_at IS NULL"
)


async def purge_document(
    db: Database, store: ObjectStore, vectors: VectorStore, document_id: uuid.UUID
) -> Literal["deleted", "noop"]:
    """Remove everything of a ``deleting`` document; a repeat (or a gone row) is a no-op."""
    async with db.transaction() as conn:
        row = (await conn.execute(FIND_DELETING, {"id": document_id})).mappings().one_or_none()
    if row is None:
        return "noop"
    await vectors.delete_document(document_id)
    await store.delete(row["object_key"])
    async with db.transaction() as conn:
        finished = await lifecycle.finish_delete(conn, document_id)
    log.info("document.deleted", document_id=str(document_id), finished=finished)
    return "deleted" if finished else "noop"
