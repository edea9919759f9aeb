"""Objects against rows: delete orphan objects after a grace period, fail rows whose object is gone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Final, TypeVar

import structlog

from services.reconciler import queries
from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore, StoredObject

PREFIX: Final = "kb/"
KEYS_PER_QUERY: Final = 500
# Per pass; the rest of a large backlog goes in the next sweeps.
MAX_DELETES_PER_SWEEP: Final = 1000
MAX_ACTIVE_CHECKED: Final = 10_000

T = TypeVar("T")

log = structlog.get_logger("kbingest.reconciler")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def sweep_objects(db: Database, store: ObjectStore, *, grace_s: float) -> Counter[str]:
    """One listing of ``kb/`` serves both checks; a fresh upload in flight is protected by ``grace_s``."""
    async with db.transaction() as conn:
        listed_at: datetime = (await conn.execute(queries.DB_NOW)).scalar_one()
    objects = await store.list(PREFIX)
    counts = await _delete_orphans(db, store, objects, cutoff=listed_at - timedelta(seconds=grace_s), grace_s=grace_s)
    counts.update(await _fail_missing(db, store, {o.key for o in objects}, listed_at=listed_at))
    return counts


async def _delete_orphans(
    db: Database, store: ObjectStore, objects: Sequence[StoredObject], *, cutoff: datetime, grace_s: float
) -> Counter[str]:
    counts: Counter[str] = Counter()
    old = [o for o in objects if o.last_modified is not None and o.last_modified < cutoff]
    for chunk in _chunks(old, KEYS_PER_QUERY):
        async with db.transaction() as conn:
            rows = await conn.execute(queries.OWNED_KEYS, {"keys": [o.key for o in chunk], "grace_s": grace_s})
            owned = set(rows.scalars())
        for obj in chunk:
            if obj.key in owned:
                continue
            if counts["orphan_object"] >= MAX_DELETES_PER_SWEEP:
                return counts
            await store.delete(obj.key)
            counts["orphan_object"] += 1
            log.warning(
                "object.orphan_deleted",
                key=obj.key,
                document_id=obj.key.rsplit("/", 1)[-1],
                size=obj.size,
                last_modified=obj.last_modified.isoformat() if obj.last_modified else None,
            )
    return counts


async def _fail_missing(db: Database, store: ObjectStore, listed: set[str], *, listed_at: datetime) -> Counter[str]:
    counts: Counter[str] = Counter()
    async with db.transaction() as conn:
        rows = (
            await conn.execute(queries.ACTIVE_OBJECTS, {"listed_at": listed_at, "limit": MAX_ACTIVE_CHECKED})
        ).mappings()
        suspects = [dict(r) for r in rows if r["object_key"] not in listed]
    for row in suspects:
        # The listing is a snapshot; ask once more before failing a document for good.
        if await store.exists(row["object_key"]):
            continue
        async with db.transaction() as conn:
            failed = await lifecycle.fail_object_missing(
                conn, row["id"], epoch=row["lease_epoch"], key=row["object_key"], source="kbingest/reconciler"
            )
        if failed:
            counts["object_missing"] += 1
            log.error("document.object_missing", document_id=str(row["id"]), key=row["object_key"])
    return counts
