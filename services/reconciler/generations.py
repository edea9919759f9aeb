"""Backstop of the generation switch: a building generation with nothing left to do is switched here.

The switch normally happens in the transaction that makes the last build terminal
(``shared.generations.on_terminal``). A generation can also run out of work without such a
transition (its last pending document was deleted, a build row was tombstoned, a transition path
that does not call the hook): this step finds those each pass and switches them, one KB per
transaction, under the same locks.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

import structlog
from sqlalchemy import text

from shared import generations
from shared.db import Database

SOURCE: Final = "kbingest/reconciler"
# Building generations with no queued/processing row left that must finish before their switch.
IDLE_BUILDING: Final = text(
    """
    SELECT g.knowledge_base_id FROM index_generations g
    JOIN knowledge_bases k ON k.id = g.knowledge_base_id AND k.deleted_at IS NULL
    WHERE g.state = 'building' AND NOT EXISTS (
        SELECT 1 FROM documents d WHERE d.knowledge_base_id = g.knowledge_base_id AND d.deleted_at IS NULL
          AND d.status IN ('queued', 'processing')
          AND (d.purpose IS DISTINCT FROM 'reindex' OR d.generation = g.generation)
    )
    LIMIT :limit
    """
)
MAX_PER_PASS: Final = 100

log = structlog.get_logger("kbingest.reconciler")


async def switch_idle_generations(db: Database, *, limit: int = MAX_PER_PASS) -> Counter[str]:
    """Switch (or, when no build succeeded, cancel) every building generation that has nothing pending."""
    counts: Counter[str] = Counter()
    async with db.transaction() as conn:
        kb_ids = list((await conn.execute(IDLE_BUILDING, {"limit": limit})).scalars())
    for kb_id in kb_ids:
        async with db.transaction() as conn:
            switched = await generations.maybe_switch(conn, kb_id)
        if switched is not None:
            counts["generation_switched"] += 1
            log.warning("reconciler.generation_switched", knowledge_base_id=str(kb_id), generation=switched)
    return counts
