"""The reconciler's scans use their indexes (a pass must stay cheap as tables grow)."""

from __future__ import annotations

from sqlalchemy import TextClause, text

from services.reconciler import queries, repairs
from shared.db import Database


async def _plan(db: Database, statement: TextClause, **params: object) -> str:
    async with db.transaction() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await conn.execute(text(f"EXPLAIN {statement.text}"), params)
        return "\n".join(row[0] for row in rows)


async def test_stale_scan_uses_the_processing_heartbeat_index(db: Database) -> None:
    plan = await _plan(db, queries.STALE_PROCESSING, stale_s=30.0)
    assert "ix_documents_processing_heartbeat" in plan


async def test_lost_dispatch_scan_uses_queue_and_outbox_aggregate_indexes(db: Database) -> None:
    plan = await _plan(db, queries.LOST_DISPATCH, **repairs.reemit_params("document.requeued", 20.0))
    assert "ix_documents_queued_available" in plan
    assert "ix_outbox_aggregate_created" in plan or "ix_outbox_pending_aggregate" in plan


async def test_prunes_use_their_indexes(db: Database) -> None:
    assert "ix_outbox_delivered" in await _plan(db, queries.PRUNE_OUTBOX, retention_s=60.0, batch=1000)
    assert "ix_processor_inbox_received_at" in await _plan(db, queries.PRUNE_INBOX, retention_s=60.0, batch=1000)
    assert "ix_outbox_dead" in await _plan(db, queries.PRUNE_DEAD, retention_s=60.0, batch=1000)
