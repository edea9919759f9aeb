"""Fencing for vector writes: Qdrant knows no lease, so a write is confirmed against Postgres after it landed.

A holder that lost its lease while writing (the document was deleted and purged, or rescued and
processed by someone else) may have put points back that nobody will ever remove. After every write
the holder renews its lease; when that fails it takes back what the document's new state makes stale.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from sqlalchemy import text

from shared import lifecycle
from shared.db import Database
from shared.lifecycle import Lease
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor.fence")

# What became of a document whose lease we lost (no row: it is gone).
CURRENT_STATE: Final = text("SELECT status, version, deleted_at FROM documents WHERE id = :id")

TakeBack = Literal["purged", "older_versions_deleted", "left_to_next_holder"]


@dataclass(frozen=True)
class LeaseCheck:
    """The lease still held, or what the document became: ``status`` None when the row is gone."""

    held: bool
    status: str | None = None
    version: int | None = None
    deleted: bool = False


async def check_lease(db: Database, lease: Lease) -> LeaseCheck:
    """Renew the lease (the same fenced statement as a heartbeat); when it is gone, read what replaced it."""
    async with db.transaction() as conn:
        if await lifecycle.heartbeat(conn, lease):
            return LeaseCheck(held=True)
        row = (await conn.execute(CURRENT_STATE, {"id": lease.document_id})).mappings().one_or_none()
    if row is None:
        return LeaseCheck(held=False, deleted=True)
    deleted = row["status"] == "deleting" or row["deleted_at"] is not None
    return LeaseCheck(held=False, status=row["status"], version=row["version"], deleted=deleted)


async def take_back(vectors: VectorStore, lease: Lease, check: LeaseCheck) -> TakeBack:
    """Remove what a write under a lost lease left behind, as far as the document's new state says.

    Deleted: every point goes (the purge may have run before our write landed; this repeats it).
    Ready under a newer version: every older version goes (ours among them). Otherwise a newer
    holder is at work or will be, and its own success removes older versions; deleting ours by
    version alone is not possible through the VectorStore protocol without touching theirs.
    """
    document_id: uuid.UUID = lease.document_id
    bound = log.bind(document_id=str(document_id), epoch=lease.epoch, version=lease.version)
    if check.deleted:
        await vectors.delete_document(document_id)
        outcome: TakeBack = "purged"
    elif check.status == "ready" and check.version is not None and check.version > lease.version:
        await vectors.delete_older_versions(document_id, check.version)
        outcome = "older_versions_deleted"
    else:
        outcome = "left_to_next_holder"
    bound.warning("document.vectors_taken_back", outcome=outcome, status=check.status, current_version=check.version)
    return outcome
