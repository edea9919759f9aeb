"""Objects against rows: delete orphan objects after a grace period, fail rows whose object is gone.

The bucket is swept one page of keys per pass, in key order, resuming where the last pass stopped
(``reconciler_state.sweep_after``, so a new leader resumes too) and wrapping around at the end: a
pass's cost is bounded by the page, not by the bucket (a million objects is a hundred passes).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypeVar

import structlog

from services.reconciler import queries
from shared import lifecycle
from shared.db import Database
from shared.pipeline_health import RECONCILER_STATE_NAME
from shared.storage import ObjectStore, StoredObject

PREFIX: Final = "kb/"
KEYS_PER_QUERY: Final = 500
# Per pass; a page with more orphans ends at the last one deleted and the next pass goes on from there.
MAX_DELETES_PER_SWEEP: Final = 1000
MAX_ACTIVE_CHECKED: Final = 10_000

T = TypeVar("T")

log = structlog.get_logger("kbingest.reconciler")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(eq=False)
class ObjectSweep:
    """One reconciler step: a page per pass while a round is under way; a new round at most every ``min_round_s``."""

    db: Database
    store: ObjectStore
    _: KW_ONLY
    leader_id: str
    grace_s: float
    page_keys: int
    min_round_s: float
    # A replica's first pass starts a round at once (or resumes the stored one).
    _next_round_at: float = field(default=0.0, init=False)

    async def run(self) -> Counter[str]:
        """Sweep the next page: its orphans deleted, the rows whose key falls in it checked for their object."""
        async with self.db.transaction() as conn:
            after: str | None = (
                await conn.execute(queries.SWEEP_CURSOR, {"name": RECONCILER_STATE_NAME})
            ).scalar_one_or_none()
            listed_at: datetime = (await conn.execute(queries.DB_NOW)).scalar_one()
        if after is None and time.monotonic() < self._next_round_at:
            return Counter()
        page = await self.store.list_page(PREFIX, start_after=after, limit=self.page_keys)
        counts, handled = await self._delete_orphans(page, cutoff=listed_at - timedelta(seconds=self.grace_s))
        # A full page (or one cut short by the delete cap) ends at its last handled key; a short one reached the
        # end of the bucket: its range is open-ended and the next round starts over.
        more = len(page) >= self.page_keys or len(handled) < len(page)
        upto = handled[-1].key if more else None
        counts.update(await _fail_missing(self.db, self.store, handled, listed_at=listed_at, after=after, upto=upto))
        async with self.db.transaction() as conn:
            await conn.execute(
                queries.SAVE_SWEEP_CURSOR, {"name": RECONCILER_STATE_NAME, "leader_id": self.leader_id, "after": upto}
            )
        if upto is None:
            self._next_round_at = time.monotonic() + self.min_round_s
            log.info("reconciler.sweep_round_done", last_page_keys=len(handled))
        return counts

    async def _delete_orphans(
        self, page: Sequence[StoredObject], *, cutoff: datetime
    ) -> tuple[Counter[str], Sequence[StoredObject]]:
        """Delete the page's unowned objects older than the cutoff; returns the part of the page handled."""
        counts: Counter[str] = Counter()
        old = [o for o in page if o.last_modified is not None and o.last_modified < cutoff]
        for chunk in _chunks(old, KEYS_PER_QUERY):
            async with self.db.transaction() as conn:
                rows = await conn.execute(queries.OWNED_KEYS, {"keys": [o.key for o in chunk], "grace_s": self.grace_s})
                owned = set(rows.scalars())
            for obj in chunk:
                if obj.key in owned:
                    continue
                await self.store.delete(obj.key)
                counts["orphan_object"] += 1
                log.warning(
                    "object.orphan_deleted",
                    key=obj.key,
                    document_id=obj.key.rsplit("/", 1)[-1],
                    size=obj.size,
                    last_modified=obj.last_modified.isoformat() if obj.last_modified else None,
                )
                if counts["orphan_object"] >= MAX_DELETES_PER_SWEEP:
                    return counts, page[: page.index(obj) + 1]
        return counts, page


async def _fail_missing(
    db: Database,
    store: ObjectStore,
    page: Sequence[StoredObject],
    *,
    listed_at: datetime,
    after: str | None,
    upto: str | None,
) -> Counter[str]:
    """Fail the active rows whose key falls in the page's range (after, upto] but was not listed."""
    counts: Counter[str] = Counter()
    listed = {o.key for o in page}
    params = {"listed_at": listed_at, "after": after, "upto": upto, "limit": MAX_ACTIVE_CHECKED}
    async with db.transaction() as conn:
        rows = (await conn.execute(queries.ACTIVE_OBJECTS, params)).mappings()
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
