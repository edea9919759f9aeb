"""Retention: delivered outbox rows and processor inbox rows go in bounded batches; the rest stays."""

from __future__ import annotations

import uuid
from collections import Counter

from services.reconciler import prune
from shared.db import Database
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import create_document, create_kb, execute, fetch
from tests.support.reconcilers import ReconcilerFactory

RETENTION_S = 3600.0
# Dead letters have a retention of their own; these tests' dead rows (30 days old) are within it.
DEAD_RETENTION_S = 60 * 24 * 3600.0


async def _outbox_rows(db: Database, store: ObjectStore, n: int) -> None:
    kb = await create_kb(db)
    for _ in range(n):
        await create_document(db, store, kb)


async def _inbox_rows(db: Database, n: int, *, age_s: float) -> None:
    for _ in range(n):
        await execute(
            db,
            "INSERT INTO processor_inbox (event_id, event_type, received_at) "
            "VALUES (:id, 'document.uploaded', now() - make_interval(secs => :age))",
            id=uuid.uuid4(),
            age=age_s,
        )


async def _prune_small(db: Database) -> Counter[str]:
    return await prune.prune(db, retention_s=RETENTION_S, dead_retention_s=DEAD_RETENTION_S, batch=10, max_batches=2)


async def _counts(db: Database) -> dict[str, int]:
    rows = await fetch(
        db,
        "SELECT (SELECT count(*) FROM outbox) AS outbox, (SELECT count(*) FROM processor_inbox) AS inbox",
    )
    return {k: int(v) for k, v in rows[0].items()}


async def test_old_delivered_events_are_pruned_in_bounded_batches(db: Database, store: ObjectStore) -> None:
    await _outbox_rows(db, store, 35)
    seqs = [r["seq"] for r in await fetch(db, "SELECT seq FROM outbox ORDER BY seq")]
    old_delivered, recent_delivered, pending, dead = seqs[:25], seqs[25:28], seqs[28:32], seqs[32:]
    await execute(
        db, "UPDATE outbox SET delivered_at = now() - interval '2 hours' WHERE seq = ANY(:s)", s=old_delivered
    )
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE seq = ANY(:s)", s=recent_delivered)
    await execute(
        db,
        "UPDATE outbox SET dead_at = now() - interval '30 days', dead_reason = 'max_attempts' WHERE seq = ANY(:s)",
        s=dead,
    )
    await _inbox_rows(db, 12, age_s=2 * RETENTION_S)
    await _inbox_rows(db, 2, age_s=10)

    # Two batches of 10 at most in one pass: the backlog is worked off over passes, never in one long transaction.
    assert await _prune_small(db) == {"outbox_pruned": 20, "inbox_pruned": 12}
    assert await _prune_small(db) == {"outbox_pruned": 5}
    assert await _prune_small(db) == {}

    left = {r["seq"] for r in await fetch(db, "SELECT seq FROM outbox")}
    assert left == set(recent_delivered) | set(pending) | set(dead), "pending, recent and recent dead letters are kept"
    assert (await _counts(db))["inbox"] == 2


async def test_a_pass_prunes_with_the_configured_retention(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    await _outbox_rows(db, store, 3)
    await execute(db, "UPDATE outbox SET delivered_at = now() - interval '2 hours'")

    default = make_reconciler()
    assert "outbox_pruned" not in (await default.run_once()).counts  # default retention: 7 days
    await default.close()
    result = await make_reconciler(outbox_retention_s=RETENTION_S).run_once()

    assert result.counts.get("outbox_pruned") == 3
    assert (await _counts(db))["outbox"] == 0
