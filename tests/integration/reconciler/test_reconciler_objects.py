"""Objects against rows: orphans go after the grace period, rows whose object vanished fail."""

from __future__ import annotations

import asyncio
import uuid

from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore, object_key
from tests.support.pipeline_helpers import (
    claim,
    create_document,
    create_kb,
    document_status,
    events_of,
    execute,
    fetch_one,
)
from tests.support.reconcilers import ReconcilerFactory

GRACE_S = 3.0


async def test_orphans_are_deleted_after_the_grace_and_fresh_uploads_are_not(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    orphan = object_key(kb, uuid.uuid4())
    await store.put_bytes(orphan, b"left behind by a crashed upload", content_type="text/plain")
    live = await create_document(db, store, kb)
    gone_long_ago = await create_document(db, store, kb)
    gone_just_now = await create_document(db, store, kb)
    for doc in (gone_long_ago, gone_just_now):
        async with db.transaction() as conn:
            await lifecycle.request_delete(conn, doc)
            await lifecycle.finish_delete(conn, doc)
    await execute(db, "UPDATE documents SET deleted_at = now() - interval '1 hour' WHERE id = :id", id=gone_long_ago)
    await asyncio.sleep(GRACE_S + 1.5)
    await execute(db, "UPDATE documents SET deleted_at = now() WHERE id = :id", id=gone_just_now)
    in_flight = object_key(kb, uuid.uuid4())  # an upload whose row is not committed yet
    await store.put_bytes(in_flight, b"being uploaded", content_type="text/plain")

    result = await make_reconciler(orphan_grace_s=GRACE_S).run_once()

    assert result.counts.get("orphan_object") == 2
    remaining = {o.key for o in await store.list("kb/")}
    assert remaining == {object_key(kb, live), object_key(kb, gone_just_now), in_flight}


async def test_rows_whose_object_is_missing_fail_with_object_missing(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    queued = await create_document(db, store, kb)
    processing = await create_document(db, store, kb)
    intact = await create_document(db, store, kb)
    lease = await claim(db, processing)
    for doc in (queued, processing):
        await store.delete(object_key(kb, doc))

    result = await make_reconciler().run_once()

    assert result.counts.get("object_missing") == 2
    for doc in (queued, processing):
        row = await fetch_one(db, "SELECT status, error FROM documents WHERE id = :id", id=doc)
        assert row["status"] == "failed" and row["error"]["code"] == "object_missing"
        assert row["error"]["retryable"] is False
        assert (await events_of(db, doc))[-1]["type"] == "document.failed"
    assert await document_status(db, intact) == "queued"
    attempt = await fetch_one(db, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=processing)
    assert attempt["outcome"] == "failed"
    async with db.transaction() as conn:
        assert not await lifecycle.mark_ready(conn, lease, chunk_count=1), "the holder must be fenced off"
