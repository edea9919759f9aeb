"""Content versions of a document (``document_versions``): their rows, activation and retention.

docs/documents-change.md: a document's first content is version 1, processed by the document row
itself; each replacement is a new version processed by a ``replace`` build row. These helpers run
in the caller's transaction (shared.lifecycle), next to the state change they belong to.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

# The content columns a version row shares with the row that processes it.
CONTENT_COLUMNS: Final = ("object_key", "sha256", "size_bytes", "media_type", "original_filename")

INSERT_VERSION: Final = text(
    """
    INSERT INTO document_versions (document_id, version, sha256, size_bytes, media_type, original_filename,
        object_key, status, build_id)
    VALUES (:document_id, :version, :sha256, :size_bytes, :media_type, :original_filename,
        :object_key, 'pending', :build_id)
    """
)

# The next version number of a document (versions are never reused, even superseded ones).
NEXT_VERSION: Final = text("SELECT COALESCE(max(version), 0) + 1 FROM document_versions WHERE document_id = :id")

# The version a document serves, and the one being processed (at most one of each).
CURRENT_VERSIONS: Final = text(
    """
    SELECT version, status, sha256, object_key, build_id FROM document_versions
    WHERE document_id = :id AND status IN ('active', 'pending')
    """
)

# A terminal transition of the row processing a version: ready → active, failed → failed (with why).
# Only a version still in play moves (a superseded one stays superseded).
SETTLE: Final = text(
    """
    UPDATE document_versions SET status = :status, error = CAST(:error AS jsonb),
        activated_at = CASE WHEN :status = 'active' THEN now() ELSE activated_at END
    WHERE document_id = :document_id AND version = :version AND status IN ('pending', 'failed')
    """
)

# A version whose processing was taken away (a newer replacement, a deletion): never served.
SUPERSEDE: Final = text(
    """
    UPDATE document_versions SET status = 'superseded'
    WHERE document_id = :document_id AND version = ANY(:versions) AND status IN ('pending', 'failed')
    RETURNING object_key
    """
)

# A deletion: every version is gone with the document (purged ones stay purged, as their files are).
SUPERSEDE_ALL: Final = text(
    "UPDATE document_versions SET status = 'superseded' WHERE document_id = :document_id AND status <> 'purged'"
)

# Every file a document ever stored, for its purge.
ALL_KEYS: Final = text("SELECT DISTINCT object_key FROM document_versions WHERE document_id = :document_id")

# Activation: the previously active version is kept (retained) and the new one serves.
RETAIN_ACTIVE: Final = text(
    """
    UPDATE document_versions SET status = 'retained'
    WHERE document_id = :document_id AND status = 'active' AND version <> :version
    """
)
ACTIVATE: Final = text(
    """
    UPDATE document_versions SET status = 'active', error = NULL, activated_at = now()
    WHERE document_id = :document_id AND version = :version
    """
)

# Retained versions beyond the newest ``keep`` are purged; their files are deleted after commit.
PURGE_BEYOND_RETENTION: Final = text(
    """
    UPDATE document_versions SET status = 'purged'
    WHERE document_id = :document_id AND status = 'retained'
      AND version NOT IN (SELECT version FROM document_versions
                          WHERE document_id = :document_id AND status = 'retained'
                          ORDER BY version DESC LIMIT :keep)
    RETURNING object_key
    """
)

# Of these keys, those nothing needs any more: no live row reads them and no kept version names them.
UNREFERENCED_KEYS: Final = text(
    """
    SELECT k FROM unnest(CAST(:keys AS text[])) AS k
    WHERE NOT EXISTS (SELECT 1 FROM documents d
                      WHERE d.object_key = k AND d.deleted_at IS NULL AND d.status <> 'deleting')
      AND NOT EXISTS (SELECT 1 FROM document_versions v
                      WHERE v.object_key = k AND v.status NOT IN ('purged', 'superseded'))
    """
)


@dataclass(frozen=True)
class Current:
    """The active and the pending version of a document (either may be absent)."""

    active: RowMapping | None
    pending: RowMapping | None


async def insert(
    conn: AsyncConnection, document_id: uuid.UUID, version: int, *, values: Any, build_id: uuid.UUID
) -> None:
    """Add a ``pending`` version with the content columns of ``values`` (a row or a dict)."""
    params = {column: values[column] for column in CONTENT_COLUMNS}
    await conn.execute(INSERT_VERSION, {**params, "document_id": document_id, "version": version, "build_id": build_id})


async def next_version(conn: AsyncConnection, document_id: uuid.UUID) -> int:
    return int((await conn.execute(NEXT_VERSION, {"id": document_id})).scalar_one())


async def current(conn: AsyncConnection, document_id: uuid.UUID) -> Current:
    rows = (await conn.execute(CURRENT_VERSIONS, {"id": document_id})).mappings().all()
    by_status = {row["status"]: row for row in rows}
    return Current(active=by_status.get("active"), pending=by_status.get("pending"))


async def settle(conn: AsyncConnection, row: RowMapping) -> None:
    """Record a processing row's terminal state on its version (a re-index build has none)."""
    if row["purpose"] == "reindex" or row["status"] not in ("ready", "failed"):
        return
    await conn.execute(
        SETTLE,
        {
            "document_id": row["parent_id"] or row["id"],
            "version": row["content_version"],
            "status": "active" if row["status"] == "ready" else "failed",
            "error": json.dumps(row["error"]) if row["error"] is not None else None,
        },
    )


async def reopen(conn: AsyncConnection, row: RowMapping) -> None:
    """A failed row queued again (user retry): its version is pending again."""
    if row["purpose"] == "reindex":
        return
    await conn.execute(
        text(
            "UPDATE document_versions SET status = 'pending', error = NULL "
            "WHERE document_id = :document_id AND version = :version AND status = 'failed'"
        ),
        {"document_id": row["parent_id"] or row["id"], "version": row["content_version"]},
    )


async def supersede(conn: AsyncConnection, document_id: uuid.UUID, versions: list[int]) -> list[str]:
    """Mark versions that will never serve ``superseded``; returns their object keys."""
    if not versions:
        return []
    result = await conn.execute(SUPERSEDE, {"document_id": document_id, "versions": versions})
    return list(result.scalars())


async def activate(conn: AsyncConnection, document_id: uuid.UUID, version: int, *, retention: int) -> list[str]:
    """``version`` becomes active, the previous active retained, retained ones beyond ``retention`` purged.

    Returns the object keys of the purged versions (to delete after commit).
    """
    params = {"document_id": document_id, "version": version}
    await conn.execute(RETAIN_ACTIVE, params)
    await conn.execute(ACTIVATE, params)
    result = await conn.execute(PURGE_BEYOND_RETENTION, {"document_id": document_id, "keep": retention})
    return list(result.scalars())


async def unreferenced(conn: AsyncConnection, keys: list[str]) -> list[str]:
    """The keys of ``keys`` that no live row reads and no kept version names: safe to delete after commit."""
    if not keys:
        return []
    return list((await conn.execute(UNREFERENCED_KEYS, {"keys": sorted(set(keys))})).scalars())
