"""Read queries of the API (named, one place)."""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.lifecycle import _COLS as DOCUMENT_COLUMNS

GET_DOCUMENT: Final = text(f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = :id AND deleted_at IS NULL")

# Live document with the same name or the same content in a KB (the 409 answer).
FIND_DUPLICATE: Final = text(
    f"""
    SELECT {DOCUMENT_COLUMNS}, (filename = :filename) AS same_name FROM documents
    WHERE knowledge_base_id = :kb_id AND deleted_at IS NULL AND (filename = :filename OR sha256 = :sha256)
    ORDER BY (filename = :filename) DESC LIMIT 1
    """
)

GET_KB: Final = text(
    "SELECT id, name, created_at, updated_at FROM knowledge_bases WHERE id = :id AND deleted_at IS NULL"
)

KB_COUNTS: Final = text(
    "SELECT status, count(*) AS n FROM documents WHERE knowledge_base_id = :id AND deleted_at IS NULL GROUP BY status"
)


async def get_document(conn: AsyncConnection, document_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(GET_DOCUMENT, {"id": document_id})).mappings().one_or_none()


async def find_duplicate(conn: AsyncConnection, kb_id: uuid.UUID, *, filename: str, sha256: str) -> RowMapping | None:
    params = {"kb_id": kb_id, "filename": filename, "sha256": sha256}
    return (await conn.execute(FIND_DUPLICATE, params)).mappings().first()


async def get_kb(conn: AsyncConnection, kb_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(GET_KB, {"id": kb_id})).mappings().one_or_none()


async def kb_counts(conn: AsyncConnection, kb_id: uuid.UUID) -> dict[str, int]:
    counts = {s: 0 for s in ("queued", "processing", "ready", "failed", "deleting")}
    for row in (await conn.execute(KB_COUNTS, {"id": kb_id})).mappings():
        counts[row["status"]] = int(row["n"])
    return counts
