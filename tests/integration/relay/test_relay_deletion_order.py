"""Per-document order must not make a deletion wait for a retry that is due minutes from now."""

from __future__ import annotations

import uuid

import asyncpg

from services.relay.sql import ClaimedEvent, claim
from shared import lifecycle
from shared.db import worker_database
from shared.outbox import add_event
from tests.support.pipeline_helpers import create_document, create_kb, execute
from tests.support.relay_helpers import connect

RETRY_DELAY_S = 300.0


async def _claim_for(conn: asyncpg.Connection, doc: uuid.UUID) -> list[ClaimedEvent]:
    return [e for e in await claim(conn, "relay-test", 100, 60.0) if e.aggregate_id == str(doc)]


async def test_a_deletion_is_not_held_back_by_a_delayed_retry(database_url: str) -> None:
    db = worker_database(database_url, service="test", max_connections=2)
    conn = await connect(database_url)
    try:
        doc = await create_document(db, None, await create_kb(db))
        await execute(db, "UPDATE outbox SET delivered_at = now() WHERE aggregate_id = :id", id=doc)
        # The processor failed retryably: the document is due again in 5 minutes.
        async with db.transaction() as tx:
            await add_event(
                tx,
                event_type="document.retry_scheduled",
                aggregate_id=doc,
                data={"document_id": str(doc)},
                source="test",
                delay_s=RETRY_DELAY_S,
            )
        assert await _claim_for(conn, doc) == [], "a delayed event waits for its time"

        async with db.transaction() as tx:
            assert await lifecycle.request_delete(tx, doc) is not None

        # The held retry goes out at once (the processor finds the document deleting: no-op)...
        first = await _claim_for(conn, doc)
        assert [e.type for e in first] == ["document.retry_scheduled"]
        await conn.execute("UPDATE outbox SET delivered_at = now(), claimed_by = NULL WHERE seq = $1", first[0].seq)
        # ...and the deletion right behind it, not five minutes later.
        assert [e.type for e in await _claim_for(conn, doc)] == ["document.delete_requested"]
    finally:
        await conn.close()
        await db.dispose()
