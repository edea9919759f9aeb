"""Stale leases: a processing document without heartbeat is requeued (or failed when out of attempts)."""

from __future__ import annotations

from prometheus_client import generate_latest

from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import claim, create_document, create_kb, events_of, execute, fetch, fetch_one
from tests.support.reconcilers import ReconcilerFactory


async def _stale(db: Database, doc_id: object, seconds: float = 120) -> None:
    await execute(
        db, "UPDATE documents SET heartbeat_at = now() - make_interval(secs => :s) WHERE id = :id", id=doc_id, s=seconds
    )


async def test_stale_processing_document_is_requeued_with_a_new_epoch(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    lease = await claim(db, doc, owner="dead-processor")
    await _stale(db, doc)

    reconciler = make_reconciler()
    result = await reconciler.run_once()

    assert result.leader and result.counts.get("stale_requeued") == 1
    row = await fetch_one(
        db, "SELECT status, stage, lease_epoch, lease_owner, error, attempts FROM documents WHERE id = :id", id=doc
    )
    assert row["status"] == "queued" and row["lease_owner"] is None
    assert row["lease_epoch"] == lease.epoch + 1
    assert row["error"]["code"] == "stalled" and row["error"]["retryable"] is True
    assert [e["type"] for e in await events_of(db, doc)] == ["document.uploaded", "document.requeued"]
    attempt = await fetch_one(
        db, "SELECT outcome, error, finished_at FROM document_attempts WHERE document_id = :id", id=doc
    )
    assert attempt["outcome"] == "stalled" and attempt["error"]["code"] == "stalled"
    assert attempt["finished_at"] is not None
    metrics = generate_latest(reconciler.metrics.registry).decode()
    assert 'kbingest_reconciler_repairs_total{kind="stale_requeued"} 1.0' in metrics

    # The zombie's lease is fenced: its writes change nothing.
    async with db.transaction() as conn:
        assert not await lifecycle.advance_stage(conn, lease, "extracting")
        assert not await lifecycle.heartbeat(conn, lease)


async def test_out_of_attempts_fails_with_max_attempts_exceeded_wrapping_stalled(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, store, kb, max_attempts=1)
    await claim(db, doc)
    await _stale(db, doc)

    result = await make_reconciler().run_once()

    assert result.counts == {"stale_failed": 1}
    row = await fetch_one(db, "SELECT status, error, processed_at FROM documents WHERE id = :id", id=doc)
    assert row["status"] == "failed" and row["processed_at"] is not None
    assert row["error"]["code"] == "max_attempts_exceeded" and row["error"]["retryable"] is False
    assert row["error"]["cause"]["code"] == "stalled"
    events = await events_of(db, doc)
    assert events[-1]["type"] == "document.failed"
    assert events[-1]["payload"]["data"]["error"]["cause"]["code"] == "stalled"


async def test_live_heartbeat_and_other_statuses_are_left_alone(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    busy = await create_document(db, store, kb)
    queued = await create_document(db, store, kb)
    await claim(db, busy)

    result = await make_reconciler().run_once()

    assert "stale_requeued" not in result.counts and "stale_failed" not in result.counts
    rows = {r["id"]: r["status"] for r in await fetch(db, "SELECT id, status FROM documents")}
    assert rows == {busy: "processing", queued: "queued"}


async def test_many_stale_documents_each_in_its_own_transaction(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    docs = [await create_document(db, store, kb) for _ in range(12)]
    for doc in docs:
        await claim(db, doc)
    await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '5 minutes'")

    result = await make_reconciler().run_once()

    assert result.counts["stale_requeued"] == 12
    statuses = {r["status"] for r in await fetch(db, "SELECT status FROM documents")}
    assert statuses == {"queued"}
    requeued = await fetch(db, "SELECT count(*) AS n FROM outbox WHERE type = 'document.requeued'")
    assert requeued[0]["n"] == 12
