"""Deleting a document: points, then the objects, then the tombstone (idempotent at every step).

The delete event is recorded in the inbox in the same transaction as the tombstone: a purge that
failed half-way leaves no record, so the redelivery purges again instead of being answered
"duplicate" for work that never happened.

A document's purge covers its build rows (docs/documents-change.md): the points of each, and the
file of every version. A build cancelled on its own (a superseded replacement, a cancelled
re-index) has no event: processors purge those as they poll for work (``purge_cancelled_builds``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal

import structlog
from sqlalchemy import text

from shared import lifecycle, versions
from shared.db import Database, DatabaseUnavailable
from shared.errors import ProcessingError
from shared.inbox import record_once
from shared.storage import ObjectStore, StorageUnavailable
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor.deletion")

FIND_DELETING: Final = text(
    "SELECT id, object_key FROM documents WHERE id = :id AND status = 'deleting' AND deleted_at IS NULL"
)

# Every build a document ever had (tombstoned ones too: their points may be back, written under a lost lease).
BUILDS_OF: Final = text("SELECT id, object_key FROM documents WHERE parent_id = :id")

# Builds cancelled on their own (not with their document): fenced, waiting for their points to go.
CANCELLED_BUILDS: Final = text(
    """
    SELECT id FROM documents
    WHERE status = 'deleting' AND deleted_at IS NULL AND parent_id IS NOT NULL
    ORDER BY updated_at LIMIT :limit
    """
)

# A cancelled build's tombstone, once its points are gone; its files belong to its versions.
TOMBSTONE_BUILD: Final = text(
    "UPDATE documents SET deleted_at = now(), updated_at = now() WHERE id = :id AND status = 'deleting' "
    "AND deleted_at IS NULL"
)

# Per poll: a larger backlog (a cancelled re-index of a big KB) is worked off over the next polls.
CANCELLED_BUILDS_PER_POLL: Final = 50

# An inbox row exists only once its event's effect committed (see the module docstring).
ALREADY_HANDLED: Final = text("SELECT 1 FROM processor_inbox WHERE event_id = :event_id")

PurgeResult = Literal["deleted", "noop", "duplicate"]


class PurgeFailed(Exception):
    """A store the purge needs is unavailable; nothing was recorded, so a redelivery purges again."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@contextmanager
def purge_failures() -> Iterator[None]:
    """A store the purge needs being down (the vector store, the object store, the database) → ``PurgeFailed``."""
    try:
        yield
    except ProcessingError as exc:
        raise PurgeFailed(exc.code.value, exc.message) from exc
    except StorageUnavailable as exc:
        raise PurgeFailed("storage_unavailable", str(exc)) from exc
    except DatabaseUnavailable as exc:
        raise PurgeFailed("database_unavailable", str(exc)) from exc


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
    with purge_failures():
        async with db.transaction() as conn:
            if (await conn.execute(ALREADY_HANDLED, {"event_id": event_id})).first() is not None:
                return "duplicate"
            row = (await conn.execute(FIND_DELETING, {"id": document_id})).mappings().one_or_none()
            builds = (await conn.execute(BUILDS_OF, {"id": document_id})).mappings().all() if row is not None else []
            keys = set((await conn.execute(versions.ALL_KEYS, {"document_id": document_id})).scalars())
        if row is not None:
            # Each row's points are stored under its own id.
            for owner in (document_id, *(b["id"] for b in builds)):
                await vectors.delete_document(owner)
            for key in sorted({row["object_key"], *(b["object_key"] for b in builds), *keys}):
                await store.delete(key)
        async with db.transaction() as conn:
            if not await record_once(conn, event_id, event_type, document_id):
                return "duplicate"  # a concurrent delivery of the same event committed first
            finished = row is not None and await lifecycle.finish_delete(conn, document_id)
    log.info("document.deleted", document_id=str(document_id), finished=finished)
    return "deleted" if finished else "noop"


async def purge_cancelled_builds(db: Database, vectors: VectorStore, *, limit: int = CANCELLED_BUILDS_PER_POLL) -> int:
    """Delete the points of builds cancelled on their own, then tombstone them; returns how many.

    Points first: a purge cut short leaves the row ``deleting`` and the next poll (of any processor)
    does it again. A fenced-out writer's late points are removed by the reconciler's tombstone pass.
    """
    async with db.transaction() as conn:
        ids = list((await conn.execute(CANCELLED_BUILDS, {"limit": limit})).scalars())
    done = 0
    for build_id in ids:
        await vectors.delete_document(build_id)
        async with db.transaction() as conn:
            result = await conn.execute(TOMBSTONE_BUILD, {"id": build_id})
        done += int(getattr(result, "rowcount", 0) or 0)
        log.info("document.build_purged", build_id=str(build_id))
    return done
