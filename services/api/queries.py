"""Read queries of the API (named, one place).

Build rows (``parent_id`` set: a replacement or a re-index of a document, docs/documents-change.md)
are never shown to users: every query here reads user documents only (``parent_id IS NULL``).
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.errors import ApiError
from shared.lifecycle import _COLS as DOCUMENT_COLUMNS
from shared.vocabulary import STATUSES

# A user document, not a build row.
USER_DOCUMENT: Final = "parent_id IS NULL"

# The document columns plus ``content_version`` (the active version), each once.
_DOCUMENT_VIEW_COLUMNS: Final = ", ".join(
    f"d.{c}" for c in dict.fromkeys([*(c.strip() for c in DOCUMENT_COLUMNS.split(",")), "content_version"])
)

# A Document as the API shows it, with its ``pending_version``: the newest replace build that is not
# serving (queued, processing or failed). The lateral subquery uses ix_documents_parent, so a page of
# documents is still one query. Callers add the WHERE on ``d`` (always ``d.parent_id IS NULL``).
DOCUMENT_VIEW: Final = f"""
    SELECT {_DOCUMENT_VIEW_COLUMNS}, p.pending_version
    FROM documents AS d
    LEFT JOIN LATERAL (
        SELECT jsonb_build_object('version', b.content_version, 'status', b.status, 'stage', b.stage,
                                  'error', b.error) AS pending_version
        FROM documents AS b
        WHERE b.parent_id = d.id AND b.purpose = 'replace' AND b.deleted_at IS NULL
          AND b.status IN ('queued', 'processing', 'failed') AND b.id <> COALESCE(d.served_by, d.id)
        ORDER BY b.content_version DESC LIMIT 1
    ) AS p ON true
"""

# A live user document (a build row's id is not found).
GET_DOCUMENT: Final = text(f"{DOCUMENT_VIEW} WHERE d.id = :id AND d.deleted_at IS NULL AND d.{USER_DOCUMENT}")

# A user document as written, tombstoned or not: what an ambiguous COMMIT may have written.
GET_WRITTEN_DOCUMENT: Final = text(f"{DOCUMENT_VIEW} WHERE d.id = :id AND d.{USER_DOCUMENT}")

# One page of a KB's live user documents, newest first (ix_documents_kb_created).
_LIST_DOCUMENTS: Final = f"""{DOCUMENT_VIEW}
    WHERE d.knowledge_base_id = :kb_id AND d.deleted_at IS NULL AND d.{USER_DOCUMENT}
      AND (CAST(:status AS text) IS NULL OR d.status = :status) {{after}}
    ORDER BY d.created_at DESC, d.id DESC LIMIT :limit
"""
LIST_DOCUMENTS: Final = text(_LIST_DOCUMENTS.format(after=""))
LIST_DOCUMENTS_AFTER: Final = text(_LIST_DOCUMENTS.format(after="AND (d.created_at, d.id) < (:c_created, :c_id)"))

# Live user document with the same name or the same content in a KB (the 409 answer); ``exclude``
# leaves out the document being replaced.
FIND_DUPLICATE: Final = text(
    f"""
    SELECT {DOCUMENT_COLUMNS}, COALESCE(filename = CAST(:filename AS text), false) AS same_name FROM documents
    WHERE knowledge_base_id = :kb_id AND deleted_at IS NULL AND {USER_DOCUMENT}
      AND (filename = CAST(:filename AS text) OR sha256 = :sha256)
      AND (CAST(:exclude AS uuid) IS NULL OR id <> CAST(:exclude AS uuid))
    ORDER BY same_name DESC LIMIT 1
    """
)

GET_KB: Final = text(
    "SELECT id, name, created_at, updated_at FROM knowledge_bases WHERE id = :id AND deleted_at IS NULL"
)

KB_COUNTS: Final = text(
    f"""
    SELECT status, count(*) AS n FROM documents
    WHERE knowledge_base_id = :id AND deleted_at IS NULL AND {USER_DOCUMENT} GROUP BY status
    """
)

# A document's versions, newest first.
LIST_VERSIONS: Final = text(
    """
    SELECT version, sha256, size_bytes, status, created_at, activated_at, error FROM document_versions
    WHERE document_id = :id ORDER BY version DESC
    """
)

# One version's file and what it is, to stream it back.
GET_VERSION: Final = text(
    """
    SELECT version, status, object_key, media_type, size_bytes FROM document_versions
    WHERE document_id = :id AND version = :version
    """
)


async def get_document(conn: AsyncConnection, document_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(GET_DOCUMENT, {"id": document_id})).mappings().one_or_none()


async def get_written_document(conn: AsyncConnection, document_id: uuid.UUID) -> RowMapping:
    return (await conn.execute(GET_WRITTEN_DOCUMENT, {"id": document_id})).mappings().one()


async def list_documents(
    conn: AsyncConnection,
    kb_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    after: tuple[object, uuid.UUID] | None,
) -> list[RowMapping]:
    params: dict[str, object] = {"kb_id": kb_id, "status": status, "limit": limit}
    statement = LIST_DOCUMENTS
    if after is not None:
        statement = LIST_DOCUMENTS_AFTER
        params["c_created"], params["c_id"] = after
    return list((await conn.execute(statement, params)).mappings().all())


async def find_duplicate(
    conn: AsyncConnection,
    kb_id: uuid.UUID,
    *,
    filename: str | None,
    sha256: str,
    exclude: uuid.UUID | None = None,
) -> RowMapping | None:
    """The live user document with this name (first) or content; ``filename=None`` looks at content only."""
    params = {"kb_id": kb_id, "filename": filename, "sha256": sha256, "exclude": exclude}
    return (await conn.execute(FIND_DUPLICATE, params)).mappings().first()


async def get_kb(conn: AsyncConnection, kb_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(GET_KB, {"id": kb_id})).mappings().one_or_none()


def kb_not_found() -> ApiError:
    """The one answer for a knowledge base that does not exist or is being deleted."""
    return ApiError(404, "not_found", "knowledge base not found")


def document_not_found() -> ApiError:
    """The one answer for a document that does not exist, is gone, or is not the key's to see."""
    return ApiError(404, "not_found", "document not found")


async def live_kb(conn: AsyncConnection, kb_id: uuid.UUID) -> RowMapping:
    """The knowledge base's row; 404 when it does not exist or is being deleted."""
    row = await get_kb(conn, kb_id)
    if row is None:
        raise kb_not_found()
    return row


async def kb_counts(conn: AsyncConnection, kb_id: uuid.UUID) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for row in (await conn.execute(KB_COUNTS, {"id": kb_id})).mappings():
        counts[row["status"]] = int(row["n"])
    return counts


async def list_versions(conn: AsyncConnection, document_id: uuid.UUID) -> list[RowMapping]:
    return list((await conn.execute(LIST_VERSIONS, {"id": document_id})).mappings().all())


async def get_version(conn: AsyncConnection, document_id: uuid.UUID, version: int) -> RowMapping | None:
    return (await conn.execute(GET_VERSION, {"id": document_id, "version": version})).mappings().one_or_none()
