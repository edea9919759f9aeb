"""``lifecycle.claim_next`` on the real Postgres: concurrent claimers, fairness, what is never taken."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from shared import lifecycle
from shared.db import Database, worker_database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = worker_database(database_url, service="test", max_connections=8)
    yield database
    await database.dispose()


async def _kb(db: Database, name: str) -> uuid.UUID:
    kb_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(text("INSERT INTO knowledge_bases (id, name) VALUES (:id, :n)"), {"id": kb_id, "n": name})
    return kb_id


async def _docs(db: Database, kb_id: uuid.UUID, n: int, *, priority: str = "normal") -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        # One transaction each: created_at is the transaction's now(), and age order needs distinct ones.
        async with db.transaction() as conn:
            doc_id = uuid.uuid4()
            digest = hashlib.sha256(doc_id.bytes).hexdigest()
            values = {
                "id": doc_id,
                "knowledge_base_id": kb_id,
                "batch_id": None,
                "filename": f"{priority}-{i}-{doc_id.hex[:6]}.txt",
                "original_filename": f"{i}.txt",
                "media_type": "text/plain",
                "size_bytes": 1,
                "sha256": digest,
                "object_key": f"kb/{kb_id}/{doc_id}",
                "priority": priority,
                "max_attempts": 3,
            }
            await lifecycle.create_document(conn, values=values)
            ids.append(doc_id)
    return ids


async def _claim(db: Database, owner: str = "p") -> lifecycle.Lease | None:
    async with db.transaction() as conn:
        return await lifecycle.claim_next(conn, owner=owner)


async def test_concurrent_claimers_take_each_document_exactly_once(db: Database) -> None:
    kbs = [await _kb(db, f"kb-{i}") for i in range(3)]
    expected = set()
    for kb in kbs:
        expected.update(await _docs(db, kb, 20))

    async def claimer(name: str) -> list[uuid.UUID]:
        taken = []
        while (lease := await _claim(db, name)) is not None:
            taken.append(lease.document_id)
        return taken

    results = await asyncio.gather(*(claimer(f"p{i}") for i in range(6)))
    taken = [doc for result in results for doc in result]
    assert len(taken) == len(set(taken)) == len(expected)
    assert set(taken) == expected
    async with db.transaction() as conn:
        opened = (await conn.execute(text("SELECT count(*) FROM document_attempts"))).scalar_one()
    assert opened == len(expected), "one attempt per claim"


async def test_round_robin_across_knowledge_bases_then_age(db: Database) -> None:
    big = await _kb(db, "backlog")
    backlog = await _docs(db, big, 5)
    first = await _claim(db)
    assert first is not None and first.document_id == backlog[0]
    idle = await _kb(db, "idle")
    [single] = await _docs(db, idle, 1)
    # The idle KB was never served: its one document goes ahead of the backlog's next four.
    second = await _claim(db)
    assert second is not None and second.document_id == single
    rest = [lease.document_id for lease in [await _claim(db) for _ in range(4)] if lease is not None]
    assert rest == backlog[1:]
    assert await _claim(db) is None


async def test_priority_first_and_nothing_not_due_or_deleting(db: Database) -> None:
    kb = await _kb(db, "kb")
    low = await _docs(db, kb, 1, priority="low")
    normal = await _docs(db, kb, 1)
    high = await _docs(db, kb, 1, priority="high")
    later = await _docs(db, kb, 1, priority="high")
    gone = await _docs(db, kb, 1, priority="high")
    async with db.transaction() as conn:
        await conn.execute(
            text("UPDATE documents SET available_at = now() + interval '1 hour' WHERE id = :id"), {"id": later[0]}
        )
        await lifecycle.request_delete(conn, gone[0])
    order = []
    while (lease := await _claim(db)) is not None:
        order.append(lease.document_id)
    assert order == [high[0], normal[0], low[0]]


async def test_claim_carries_the_event_that_queued_the_document(db: Database) -> None:
    kb = await _kb(db, "kb")
    [doc] = await _docs(db, kb, 1)
    async with db.transaction() as conn:
        event_id = (
            await conn.execute(text("SELECT id FROM outbox WHERE aggregate_id = :id"), {"id": doc})
        ).scalar_one_or_none()
    lease = await _claim(db)
    assert lease is not None
    assert lease.event_id == (str(event_id) if event_id is not None else None)


async def test_deleting_a_document_in_progress_closes_its_attempt(db: Database) -> None:
    kb = await _kb(db, "kb")
    [doc] = await _docs(db, kb, 1)
    assert await _claim(db) is not None
    async with db.transaction() as conn:
        await lifecycle.request_delete(conn, doc)
        rows = (
            await conn.execute(
                text("SELECT outcome, finished_at FROM document_attempts WHERE document_id = :id"), {"id": doc}
            )
        ).all()
    assert [(r.outcome, r.finished_at is not None) for r in rows] == [("deleted", True)]
