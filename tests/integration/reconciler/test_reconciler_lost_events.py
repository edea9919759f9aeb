"""Lost dispatches: a queued document whose events all died (or a stuck deletion) gets one re-emitted, once."""

from __future__ import annotations

import uuid

from services.reconciler.reconciler import Reconciler
from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import (
    age_document,
    create_document,
    create_kb,
    deliver_all,
    document_status,
    events_of,
    execute,
)

# Documents are aged 60 s: past the ``reconciler`` fixture's 10 s grace.


async def _reemitted_dead_letter(db: Database, store: ObjectStore, reconciler: Reconciler) -> uuid.UUID:
    """A queued document past the grace whose only event died (processor down for hours), once re-emitted."""
    doc = await create_document(db, store, await create_kb(db))
    await execute(
        db, "UPDATE outbox SET dead_at = now(), dead_reason = 'max_attempts' WHERE aggregate_id = :id", id=doc
    )
    await age_document(db, doc, 60)
    assert (await reconciler.run_once()).counts.get("lost_event") == 1
    return doc


async def test_dead_lettered_upload_event_is_reemitted_once(
    db: Database, store: ObjectStore, reconciler: Reconciler
) -> None:
    doc = await _reemitted_dead_letter(db, store, reconciler)
    events = await events_of(db, doc)
    assert [e["type"] for e in events] == ["document.uploaded", "document.requeued"]
    assert events[-1]["delivered_at"] is None and events[-1]["dead_at"] is None
    assert events[-1]["payload"]["source"] == "kbingest/reconciler"
    # No flood: the fresh event is in flight, so later passes leave it alone.
    assert "lost_event" not in (await reconciler.run_once()).counts
    await deliver_all(db)
    assert "lost_event" not in (await reconciler.run_once()).counts, "re-emitted within the grace period"


async def test_a_delivered_event_is_enough_because_processors_pull_the_queue(
    db: Database, store: ObjectStore, reconciler: Reconciler
) -> None:
    """A document waiting behind a backlog long after its event was delivered is not lost: no new event."""
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    await deliver_all(db)
    await age_document(db, doc, 60)

    result = await reconciler.run_once()

    assert "lost_event" not in result.counts
    assert [e["type"] for e in await events_of(db, doc)] == ["document.uploaded"]


async def test_queued_documents_with_a_pending_recent_or_future_event_are_left_alone(
    db: Database, store: ObjectStore, reconciler: Reconciler
) -> None:
    kb = await create_kb(db)
    pending = await create_document(db, store, kb)
    await age_document(db, pending, 60)  # old, but its event is still undelivered
    recent = await create_document(db, store, kb)
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE aggregate_id = :id", id=recent)
    not_due = await create_document(db, store, kb)
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE aggregate_id = :id", id=not_due)
    await age_document(db, not_due, 60)
    await execute(db, "UPDATE documents SET available_at = now() + interval '1 hour' WHERE id = :id", id=not_due)

    result = await reconciler.run_once()

    assert "lost_event" not in result.counts
    for doc in (pending, recent, not_due):
        assert [e["type"] for e in await events_of(db, doc)] == ["document.uploaded"]


async def test_unroutable_requeue_is_not_repeated(db: Database, store: ObjectStore, reconciler: Reconciler) -> None:
    doc = await _reemitted_dead_letter(db, store, reconciler)
    # The relay parks the re-emitted event: no route for document.requeued (seed 002).
    await execute(
        db,
        "UPDATE outbox SET dead_at = now(), dead_reason = 'unroutable' "
        "WHERE type = 'document.requeued' AND aggregate_id = :id",
        id=doc,
    )
    await age_document(db, doc, 60)

    assert "lost_event" not in (await reconciler.run_once()).counts
    assert len(await events_of(db, doc)) == 2


async def test_stuck_deletion_reemits_delete_requested(
    db: Database, store: ObjectStore, reconciler: Reconciler
) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    async with db.transaction() as conn:
        assert await lifecycle.request_delete(conn, doc) is not None
    await deliver_all(db)  # delivered, but the purge never finished (processor died mid-delete)
    await age_document(db, doc, 60)

    assert (await reconciler.run_once()).counts.get("stuck_delete") == 1
    events = await events_of(db, doc)
    assert [e["type"] for e in events][-1] == "document.delete_requested"
    assert events[-1]["delivered_at"] is None
    assert await document_status(db, doc) == "deleting"
    assert "stuck_delete" not in (await reconciler.run_once()).counts

    async with db.transaction() as conn:
        assert await lifecycle.finish_delete(conn, doc)
    await deliver_all(db)
    await age_document(db, doc, 60)
    assert "stuck_delete" not in (await reconciler.run_once()).counts
