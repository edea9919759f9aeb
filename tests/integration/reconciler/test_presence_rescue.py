"""Fast rescue: a processor whose presence lock is gone has its documents requeued after two checks in a row.

Real Postgres, real advisory locks: the processor's side is ``services.processor.presence.Presence`` or a
bare session holding the same lock; the reconciler's side is ``PresenceRescue.check_once`` driven by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.processor.presence import Presence
from services.reconciler.reconciler import Reconciler
from shared import lifecycle, presence
from shared.db import Database, asyncpg_dsn
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support import servers
from tests.support.pipeline_helpers import (
    claim,
    create_document,
    create_kb,
    document_status,
    events_of,
    fetch,
    fetch_one,
    open_db,
)
from tests.support.poll import eventually
from tests.support.reconcilers import ReconcilerFactory

HeldBy = Callable[[str], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True)
class Claimed:
    doc: uuid.UUID
    owner: str
    lease: lifecycle.Lease


ClaimedUnderLock = Callable[..., contextlib.AbstractAsyncContextManager[Claimed]]


# Short enough that the session's Postgres, started moments ago, is past it; the grace test sets its own.
RESTART_GRACE_S = 1.0


@pytest.fixture
def hold(settings: Settings) -> HeldBy:
    """A bare session holding ``owner``'s presence lock for the block; leaving the block ends the session."""

    @contextlib.asynccontextmanager
    async def held(owner: str) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
        try:
            assert await conn.fetchval(presence.TRY_LOCK, presence.NAMESPACE, owner)
            yield conn
        finally:
            await conn.close()
        await _until_released(settings.database_url, owner)

    return held


@pytest.fixture
def claimed_under_lock(db: Database, store: ObjectStore, hold: HeldBy) -> ClaimedUnderLock:
    """A new document claimed by a new owner whose presence lock is held for the block (``create_document`` args)."""

    @contextlib.asynccontextmanager
    async def claimed(**document: Any) -> AsyncIterator[Claimed]:
        owner = _owner()
        doc = await create_document(db, store, await create_kb(db), **document)
        async with hold(owner):
            yield Claimed(doc, owner, await claim(db, doc, owner=owner))

    return claimed


async def _until_released(database_url: str, owner: str) -> None:
    """The server frees a closed session's locks a moment after the close; wait for that, not for time."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:

        async def released() -> bool:
            row = await conn.fetchrow(presence.CHECK, presence.NAMESPACE)
            key = await conn.fetchval("SELECT hashtext($1)::oid", owner)
            return key not in row["held"]

        await eventually(released, timeout_s=30, every_s=0.02)
    finally:
        await conn.close()


async def _leader(make_reconciler: ReconcilerFactory, **overrides: Any) -> Reconciler:
    reconciler = make_reconciler(**{"stale_after_s": RESTART_GRACE_S, **overrides})
    assert (await reconciler.run_once()).leader
    return reconciler


def _owner() -> str:
    return f"test-host:{uuid.uuid4().int % 100_000}:{uuid.uuid4().hex[:8]}"


async def test_a_held_lock_is_never_rescued(
    db: Database, make_reconciler: ReconcilerFactory, claimed_under_lock: ClaimedUnderLock
) -> None:
    reconciler = await _leader(make_reconciler)
    async with claimed_under_lock() as claimed:
        for _ in range(4):
            assert await reconciler.presence.check_once() == {}
    row = await fetch_one(db, "SELECT status, lease_owner FROM documents WHERE id = :id", id=claimed.doc)
    assert row == {"status": "processing", "lease_owner": claimed.owner}


async def test_a_closed_session_is_rescued_after_two_checks_and_the_holder_is_fenced(
    db: Database, make_reconciler: ReconcilerFactory, claimed_under_lock: ClaimedUnderLock
) -> None:
    reconciler = await _leader(make_reconciler)
    async with claimed_under_lock() as claimed:
        assert await reconciler.presence.check_once() == {}  # seen held
    doc, owner, lease = claimed.doc, claimed.owner, claimed.lease

    assert await reconciler.presence.check_once() == {}  # missing once: could be a reconnect
    assert await reconciler.presence.check_once() == {"presence_lost_requeued": 1}

    row = await fetch_one(
        db, "SELECT status, lease_owner, lease_epoch, error, attempts FROM documents WHERE id = :id", id=doc
    )
    assert row["status"] == "queued" and row["lease_owner"] is None and row["lease_epoch"] == lease.epoch + 1
    assert row["error"]["code"] == "stalled" and owner in row["error"]["message"]
    attempt = await fetch_one(db, "SELECT outcome, error FROM document_attempts WHERE document_id = :id", id=doc)
    assert attempt["outcome"] == "stalled" and "database session ended" in attempt["error"]["message"]
    assert [e["type"] for e in await events_of(db, doc)] == ["document.uploaded", "document.requeued"]
    metrics = generate_latest(reconciler.metrics.registry).decode()
    assert 'kbingest_documents_rescued_total{outcome="requeued",reason="presence_lost"} 1.0' in metrics
    assert 'kbingest_reconciler_repairs_total{kind="presence_lost_requeued"} 1.0' in metrics
    async with db.transaction() as conn:
        assert not await lifecycle.heartbeat(conn, lease)
        assert not await lifecycle.advance_stage(conn, lease, "extracting")
        assert not await lifecycle.mark_ready(conn, lease, chunk_count=1)
    assert await reconciler.presence.check_once() == {}


async def test_out_of_attempts_fails_with_max_attempts_exceeded(
    db: Database, make_reconciler: ReconcilerFactory, claimed_under_lock: ClaimedUnderLock
) -> None:
    reconciler = await _leader(make_reconciler)
    async with claimed_under_lock(max_attempts=1) as claimed:
        await reconciler.presence.check_once()
    await reconciler.presence.check_once()
    assert await reconciler.presence.check_once() == {"presence_lost_failed": 1}
    doc = claimed.doc
    row = await fetch_one(db, "SELECT status, error FROM documents WHERE id = :id", id=doc)
    assert row["status"] == "failed" and row["error"]["code"] == "max_attempts_exceeded"
    assert row["error"]["cause"]["code"] == "stalled"
    assert (await events_of(db, doc))[-1]["type"] == "document.failed"


async def test_only_a_lock_seen_held_counts_and_a_retaken_lock_resets_the_count(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory, hold: HeldBy
) -> None:
    reconciler = await _leader(make_reconciler)
    never_locked, flapping = _owner(), _owner()
    kb = await create_kb(db)
    legacy, doc = await create_document(db, store, kb), await create_document(db, store, kb)
    # A processor without a presence lock (an older version in a rolling upgrade): the stale path's job.
    await claim(db, legacy, owner=never_locked)
    async with hold(flapping):
        await claim(db, doc, owner=flapping)
        assert await reconciler.presence.check_once() == {}
    assert await reconciler.presence.check_once() == {}  # missing once
    async with hold(flapping):  # re-taken after a dropped session
        assert await reconciler.presence.check_once() == {}
    assert await reconciler.presence.check_once() == {}  # missing once again: the count started over
    assert await reconciler.presence.check_once() == {"presence_lost_requeued": 1}
    rows = await fetch(db, "SELECT id, status FROM documents WHERE knowledge_base_id = :kb", kb=kb)
    assert {r["id"]: r["status"] for r in rows} == {legacy: "processing", doc: "queued"}


async def test_a_real_processor_presence_is_seen_and_its_loss_rescued(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory, settings: Settings
) -> None:
    reconciler = await _leader(make_reconciler)
    owner = _owner()
    doc = await create_document(db, store, await create_kb(db))
    processor = Presence(settings.database_url, owner)
    task = asyncio.create_task(processor.run())
    await processor.ensure_held(timeout_s=30)
    await claim(db, doc, owner=owner)
    assert await reconciler.presence.check_once() == {}
    task.cancel()  # the process goes away: its session closes
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _until_released(settings.database_url, owner)

    async def rescued() -> bool:
        await reconciler.presence.check_once()
        return await document_status(db, doc) == "queued"

    await eventually(rescued, timeout_s=30, every_s=0.05)


async def _assert_a_lost_lock_is_not_rescued(
    db: Database, claimed_under_lock: ClaimedUnderLock, checker: Reconciler
) -> None:
    """A processing document whose owner's lock was seen held, then gone for several checks: ``checker`` keeps out."""
    async with claimed_under_lock() as claimed:
        await checker.presence.check_once()
    for _ in range(4):
        assert await checker.presence.check_once() == {}
    assert await document_status(db, claimed.doc) == "processing"


async def test_nothing_is_rescued_within_the_grace_after_a_postgres_start(
    db: Database, make_reconciler: ReconcilerFactory, claimed_under_lock: ClaimedUnderLock
) -> None:
    # The grace is STALE_AFTER_S; the test server started well within this one.
    reconciler = await _leader(make_reconciler, stale_after_s=10 * 365 * 86400.0)
    await _assert_a_lost_lock_is_not_rescued(db, claimed_under_lock, reconciler)


async def test_a_replica_that_does_not_lead_does_not_check(
    db: Database, make_reconciler: ReconcilerFactory, claimed_under_lock: ClaimedUnderLock
) -> None:
    leader = await _leader(make_reconciler)
    standby = make_reconciler()
    assert not (await standby.run_once()).leader
    await _assert_a_lost_lock_is_not_rescued(db, claimed_under_lock, standby)
    assert leader.is_leader


async def test_after_a_postgres_restart_only_locks_retaken_since_count(
    own_pg: servers.EmbeddedPostgres, settings: Settings, store: ObjectStore
) -> None:
    """A restart ends every session: the leader starts over, and a processor still reconnecting is not rescued."""
    own = settings.model_copy(update={"database_url": own_pg.dsn, "stale_after_s": 120.0})
    db = open_db(own)
    reconciler = Reconciler.from_settings(own, registry=CollectorRegistry())
    survivor, late = _owner(), _owner()
    processors = {owner: Presence(own.database_url, owner) for owner in (survivor, late)}
    tasks = [asyncio.create_task(p.run()) for p in processors.values()]
    try:
        assert (await reconciler.run_once()).leader
        kb = await create_kb(db)
        docs = {owner: await create_document(db, store, kb) for owner in processors}
        for owner, p in processors.items():
            await p.ensure_held(timeout_s=30)
            await claim(db, docs[owner], owner=owner)
        await reconciler.presence.check_once()

        tasks[1].cancel()  # ``late`` will not be back before the restart grace ends
        await asyncio.to_thread(own_pg.stop)
        await asyncio.to_thread(own_pg.start)
        await processors[survivor].ensure_held(timeout_s=60)

        async def leading_again() -> bool:
            return (await reconciler.run_once()).leader

        await eventually(leading_again, timeout_s=60)
        uptime = await fetch_one(db, "SELECT extract(epoch FROM now() - pg_postmaster_start_time()) AS s")
        assert uptime["s"] < own.stale_after_s, "the checks below must run within the grace"
        for _ in range(3):
            assert await reconciler.presence.check_once() == {}
        statuses = {r["id"]: r["status"] for r in await fetch(db, "SELECT id, status FROM documents")}
        assert statuses == {docs[survivor]: "processing", docs[late]: "processing"}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reconciler.close()
        await db.dispose()


async def test_the_check_reads_processing_documents_by_index(db: Database, settings: Settings) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + presence.CHECK, presence.NAMESPACE))
    finally:
        await conn.close()
    assert "ix_documents_processing_heartbeat" in plan or "ix_documents_status" in plan, plan
