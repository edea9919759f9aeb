"""Retention: delivered outbox rows, dead letters and processor inbox rows, in small batches (no long transactions)."""

from __future__ import annotations

from collections import Counter
from typing import Final

import structlog
from sqlalchemy import TextClause

from services.reconciler import queries
from shared.db import Database

BATCH: Final = 1000
# Per pass and table (50,000 rows); a larger backlog is worked off over the next passes.
MAX_BATCHES_PER_PASS: Final = 50

log = structlog.get_logger("kbingest.reconciler")


async def _prune(db: Database, statement: TextClause, *, retention_s: float, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        async with db.transaction() as conn:
            result = await conn.execute(statement, {"retention_s": retention_s, "batch": batch})
        deleted = int(result.rowcount)
        total += deleted
        if deleted < batch:
            break
    return total


async def prune(
    db: Database,
    *,
    retention_s: float,
    dead_retention_s: float,
    batch: int = BATCH,
    max_batches: int = MAX_BATCHES_PER_PASS,
) -> Counter[str]:
    """Delete delivered outbox rows and inbox rows older than ``retention_s``, dead letters older than theirs."""
    counts: Counter[str] = Counter()
    for kind, statement, retention in (
        ("outbox_pruned", queries.PRUNE_OUTBOX, retention_s),
        ("dead_pruned", queries.PRUNE_DEAD, dead_retention_s),
        ("inbox_pruned", queries.PRUNE_INBOX, retention_s),
    ):
        deleted = await _prune(db, statement, retention_s=retention, batch=batch, max_batches=max_batches)
        if not deleted:
            continue
        counts[kind] = deleted
        if kind == "dead_pruned":
            # Undelivered events dropped for good: never silent, the operator may still need to know.
            log.warning("outbox.dead_letters_pruned", rows=deleted, retention_s=dead_retention_s)
        else:
            log.info("reconciler.pruned", table=kind.removesuffix("_pruned"), rows=deleted)
    return counts
