"""Re-purge recent tombstones once no fenced-out writer can still be writing (zombie vectors).

Qdrant knows no lease. A processor that lost its lease mid-write takes its write back itself
(services/processor/fence.py); one killed between the write and that check cannot, and its last
request may even land after the purge. So a document tombstoned after a holder's lease was taken
from it (an attempt closed as ``deleted`` or ``stalled``) has its points deleted once more,
``settle_s`` after the tombstone: by then a live holder has noticed the loss and settled its write,
and a dead one's last request has landed or timed out.

Replacements (docs/documents-change.md): every tombstoned build row is re-purged the same way, and
so is the row each activation stopped serving, found by its ``document.version_activated`` event
(the document row itself, after its first replacement, has no tombstone).

Failures: a row that ended ``failed`` has the points of its attempts' versions deleted once, settled.
An attempt whose index write landed but whose answer was lost (the vector store cut off mid-request),
or one rescued as stalled after its write, leaves points that no ready version owns.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Final

import structlog
from sqlalchemy import TextClause, text

from shared.db import Database
from shared.errors import ProcessingError
from shared.settings import Settings
from shared.vector_remote import vector_store_for
from shared.vectorstore import VectorStore

# Per pass; a longer list is worked off over the next passes.
MAX_PER_PASS: Final = 200
# How far back a reconciler that just started (or took over) looks; the cursor is in memory only.
LOOKBACK_S: Final = 3600.0
# The settle time on top of STALE_AFTER_S when no indexing timeout is configured.
WRITE_SETTLE_MAX_S: Final = 60.0

log = structlog.get_logger("kbingest.reconciler")

# Tombstones older than the settle time, after the cursor, whose lease was once taken from a holder; and
# every tombstoned build row (a superseded or cancelled build, a build a document no longer serves: its
# points were purged by a processor after the commit, which a crash can cut short).
RECENT_TOMBSTONES: Final = text(
    """
    SELECT d.id, NULL AS version, d.deleted_at AS at, d.id AS cursor_id FROM documents d
    WHERE (d.status = 'deleting' OR d.parent_id IS NOT NULL) AND d.deleted_at IS NOT NULL
      AND d.deleted_at <= now() - make_interval(secs => :settle_s)
      AND (d.deleted_at, d.id) > (
        COALESCE(CAST(:after_at AS timestamptz), now() - make_interval(secs => :settle_s + :lookback_s)),
        COALESCE(CAST(:after_id AS uuid), '00000000-0000-0000-0000-000000000000'::uuid))
      AND (d.parent_id IS NOT NULL OR EXISTS (SELECT 1 FROM document_attempts a
                  WHERE a.document_id = d.id AND a.outcome IN ('deleted', 'stalled', 'superseded')))
    ORDER BY d.deleted_at, d.id LIMIT :limit
    """
)

# Activations of replacements after the cursor, settled: the row each one stopped serving. Its points
# were purged by the processor after the commit; a processor that died first left them behind, and the
# document row itself (a document's first replacement) has no tombstone to find them by.
SETTLED_ACTIVATIONS: Final = text(
    """
    SELECT seq, CAST(payload -> 'data' ->> 'previous_build_id' AS uuid) AS row_id FROM outbox
    WHERE seq > :after AND type = 'document.version_activated'
      AND created_at <= now() - make_interval(secs => :settle_s) AND payload -> 'data' ? 'previous_build_id'
    ORDER BY seq LIMIT :limit
    """
)

# Rows that ended failed after the cursor, settled, and are still failed: every version up to the row's
# current one was written by an attempt of that failure. A retry claims a higher version, which the
# delete (versions below current + 1) keeps, so a row retried meanwhile loses nothing it serves.
SETTLED_FAILURES: Final = text(
    """
    SELECT d.id, d.version, a.finished_at AS at, a.id AS cursor_id FROM document_attempts a
    JOIN documents d ON d.id = a.document_id
    WHERE a.outcome = 'failed' AND d.status = 'failed'
      AND a.finished_at <= now() - make_interval(secs => :settle_s)
      AND (a.finished_at, a.id) > (
        COALESCE(CAST(:after_at AS timestamptz), now() - make_interval(secs => :settle_s + :lookback_s)),
        COALESCE(CAST(:after_id AS bigint), 0))
    ORDER BY a.finished_at, a.id LIMIT :limit
    """
)

# Where a reconciler that just started (or took over) looks from: the last event before the look-back
# (the primary key walked backwards over the look-back's events only).
LOOKBACK_SEQ: Final = text(
    """
    SELECT COALESCE((SELECT seq FROM outbox
                     WHERE created_at <= now() - make_interval(secs => CAST(:settle_s AS float8) + :lookback_s)
                     ORDER BY seq DESC LIMIT 1), 0)
    """
)

VectorsFactory = Callable[[], VectorStore]


def settle_s(settings: Settings) -> float:
    """How long after a tombstone or a failure its re-purge waits: no write of a holder can land later."""
    return settings.stale_after_s + (settings.stage_timeout_s("indexing") or WRITE_SETTLE_MAX_S)


# One delete on a vector store (a row's points, a generation's).
Delete = Callable[[VectorStore], Awaitable[None]]


def points_of(row_id: uuid.UUID, up_to_version: int | None = None) -> Delete:
    """Delete a row's points: all of them (None), or those of its versions up to ``up_to_version``."""
    if up_to_version is None:
        return lambda vectors: vectors.delete_document(row_id)
    return lambda vectors: vectors.delete_older_versions(row_id, up_to_version + 1)


async def delete_in_order(vectors: VectorsFactory, deletes: Sequence[Delete]) -> tuple[int, ProcessingError | None]:
    """Run ``deletes`` on one vector store in order, stopping at the first failure: how many were done, and it."""
    store = vectors()
    try:
        for done, delete in enumerate(deletes):
            try:
                await delete(store)
            except ProcessingError as exc:
                return done, exc
        return len(deletes), None
    finally:
        await store.close()


class TombstoneRepurge:
    """One reconciler step; remembers how far it got, so each tombstone is re-purged once per leader."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        vectors: VectorsFactory | None = None,
        lookback_s: float = LOOKBACK_S,
        limit: int = MAX_PER_PASS,
    ) -> None:
        self._db = db
        self._vectors = vectors or functools.partial(vector_store_for, settings, role="other")
        self._lookback_s = lookback_s
        self._limit = limit
        self.settle_s = settle_s(settings)
        self._cursors: dict[str, tuple[datetime, uuid.UUID | int]] = {}
        self._activations_after: int | None = None

    async def run(self) -> Counter[str]:
        """Delete the points of tombstones, of rows a replacement stopped serving and of failed rows, settled."""
        counts = await self._walk(RECENT_TOMBSTONES, "tombstone")
        counts.update(await self._activations())
        counts.update(await self._walk(SETTLED_FAILURES, "failed"))
        return counts

    async def _activations(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        async with self._db.transaction() as conn:
            if self._activations_after is None:
                params = {"settle_s": self.settle_s, "lookback_s": self._lookback_s}
                self._activations_after = int((await conn.execute(LOOKBACK_SEQ, params)).scalar_one())
            params = {"after": self._activations_after, "settle_s": self.settle_s, "limit": self._limit}
            rows = (await conn.execute(SETTLED_ACTIVATIONS, params)).mappings().all()
        if not rows:
            return counts
        done, failure = await delete_in_order(self._vectors, [points_of(row["row_id"]) for row in rows])
        if done:
            self._activations_after = int(rows[done - 1]["seq"])
            counts["replaced_repurged"] += done
        if failure is not None:
            build_id = str(rows[done]["row_id"])
            log.warning("document.replaced_points_repurge_failed", build_id=build_id, error=failure.message)
        return counts

    async def _walk(self, query: TextClause, what: str) -> Counter[str]:
        """Re-purge the rows ``query`` finds after the cursor of ``what``, in order; move it past those done.

        ``query`` returns ``id``, ``version`` (None: every point) and the cursor (``at``, ``cursor_id``);
        ``what`` names the counter (``{what}_repurged``) and the log events.
        """
        counts: Counter[str] = Counter()
        counter = f"{what}_repurged"
        after_at, after_id = self._cursors.get(counter) or (None, None)
        params = {
            "settle_s": self.settle_s,
            "lookback_s": self._lookback_s,
            "after_at": after_at,
            "after_id": after_id,
            "limit": self._limit,
        }
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query, params)).mappings().all()
        if not rows:
            return counts
        done, failure = await delete_in_order(self._vectors, [points_of(row["id"], row["version"]) for row in rows])
        for row in rows[:done]:
            log.debug(f"document.{what}_repurged", document_id=str(row["id"]))
        if done:
            self._cursors[counter] = (rows[done - 1]["at"], rows[done - 1]["cursor_id"])
            counts[counter] += done
        if failure is not None:
            # The cursor stays before this one: the next pass tries again from here.
            log.warning(f"document.{what}_repurge_failed", document_id=str(rows[done]["id"]), error=failure.message)
        return counts
