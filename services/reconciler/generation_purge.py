"""Delete the points of index generations no rollback can return to any more (dropped generations).

A switch keeps the previous generation for ``…/reindex/rollback`` and marks the builds of older
retired generations ``deleting`` (``shared.generations.DROPPABLE_BUILDS``). A document's own row
(generation 1) has no build row to be purged by, so its points would stay until the document is
deleted: a KB re-indexed monthly would carry its first generation forever. This step deletes every
point of a dropped generation (any row's, every collection) with one filter delete, then records it
in ``index_generations.points_purged_at``.

*Dropped*: ``retired`` and not the most recently retired generation of its KB (``ROLLBACK_TARGET``'s
order). It never stops being dropped: only the most recently retired generation can become active
again, and every retirement is newer than the previous ones. So the active generation, a building
one and the rollback target are never touched.

Settled like the tombstone re-purge: a holder of a build fenced out when its generation was dropped
may still land a write; the newest retirement of the KB (no earlier than the moment the generation
was dropped) must be ``settle_s`` old. A vector store that is down leaves the generation unrecorded:
the next pass deletes again (the delete is idempotent).
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from typing import Final

import structlog
from sqlalchemy import text

from services.reconciler.tombstones import Delete, VectorsFactory, delete_in_order, settle_s
from shared.db import Database
from shared.settings import Settings
from shared.vector_remote import vector_store_for

MAX_PER_PASS: Final = 20

log = structlog.get_logger("kbingest.reconciler")

# Retired generations of live KBs, not purged yet, with a newer retirement in their KB (so not the
# rollback target), once every retirement of the KB is settled.
DROPPED_GENERATIONS: Final = text(
    """
    SELECT g.knowledge_base_id, g.generation FROM index_generations g
    JOIN knowledge_bases k ON k.id = g.knowledge_base_id AND k.deleted_at IS NULL
    WHERE g.state = 'retired' AND g.points_purged_at IS NULL
      AND EXISTS (SELECT 1 FROM index_generations n
                  WHERE n.knowledge_base_id = g.knowledge_base_id AND n.state = 'retired'
                    AND (n.finished_at, n.generation) > (g.finished_at, g.generation))
      AND NOT EXISTS (SELECT 1 FROM index_generations r
                      WHERE r.knowledge_base_id = g.knowledge_base_id AND r.state = 'retired'
                        AND r.finished_at > now() - make_interval(secs => :settle_s))
    ORDER BY g.knowledge_base_id, g.generation LIMIT :limit
    """
)
RECORD_PURGED: Final = text(
    "UPDATE index_generations SET points_purged_at = now() "
    "WHERE knowledge_base_id = :kb AND generation = :generation AND state = 'retired'"
)


class GenerationPurge:
    """One reconciler step: purge each settled dropped generation's points once, recorded in Postgres."""

    def __init__(
        self, db: Database, settings: Settings, *, vectors: VectorsFactory | None = None, limit: int = MAX_PER_PASS
    ) -> None:
        self._db = db
        self._vectors = vectors or functools.partial(vector_store_for, settings, role="other")
        self._limit = limit
        self.settle_s = settle_s(settings)

    async def run(self) -> Counter[str]:
        """Delete and record the dropped generations found; stop at the first vector store failure."""
        counts: Counter[str] = Counter()
        async with self._db.transaction() as conn:
            params = {"settle_s": self.settle_s, "limit": self._limit}
            rows = (await conn.execute(DROPPED_GENERATIONS, params)).all()
        if not rows:
            return counts
        deletes = [_generation(kb_id, int(generation)) for kb_id, generation in rows]
        done, failure = await delete_in_order(self._vectors, deletes)
        if done:
            async with self._db.transaction() as conn:
                for kb_id, generation in rows[:done]:
                    await conn.execute(RECORD_PURGED, {"kb": kb_id, "generation": generation})
            for kb_id, generation in rows[:done]:
                log.info("index.generation_purged", knowledge_base_id=str(kb_id), generation=generation)
            counts["generation_points_purged"] += done
        if failure is not None:
            # Not recorded: the next pass deletes again.
            kb_id, generation = rows[done]
            log.warning(
                "index.generation_purge_failed",
                knowledge_base_id=str(kb_id),
                generation=generation,
                error=failure.message,
            )
        return counts


def _generation(kb_id: uuid.UUID, generation: int) -> Delete:
    return lambda vectors: vectors.delete_generation(kb_id, generation)
