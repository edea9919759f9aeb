"""Queue position against the real dispatch order: predict every document's place, then claim them one by one.

A static queue across three knowledge bases (two never served, one served long ago) and three
priorities, with documents sharing ``created_at`` (ties broken by id) and documents in retry backoff.
Each claim by ``lifecycle.claim_next`` must take the document predicted to have exactly that many
documents before it, and after every claim the remaining predictions must move up by one.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from shared import lifecycle, queue_position
from shared.db import Database, worker_database
from tests.support.pipeline_helpers import create_document, create_kb, execute

# Per knowledge base: how many documents of each priority.
SHAPE = {
    "never-served-a": {"high": 2, "normal": 6, "low": 3},
    "never-served-b": {"high": 2, "normal": 4, "low": 5},
    "served-long-ago": {"high": 1, "normal": 8, "low": 1},
}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = worker_database(database_url, service="test", max_connections=2)
    yield database
    await database.dispose()


async def _estimate(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, queue_position.Estimate]:
    async with db.transaction() as conn:
        return await queue_position.estimate(conn, ids)


async def _build_queue(db: Database) -> dict[str, list[uuid.UUID]]:
    """Documents per KB name; ``created_at`` drawn from few values so that ties are common."""
    rng = random.Random(11)
    base = datetime.now(UTC)
    docs: dict[str, list[uuid.UUID]] = {}
    for name, counts in SHAPE.items():
        kb_id = await create_kb(db, name)
        docs[name] = []
        for priority, n in counts.items():
            for _ in range(n):
                doc_id = await create_document(db, None, kb_id, priority=priority)
                created = base - timedelta(seconds=rng.choice((0, 10, 20, 30)))
                await execute(db, "UPDATE documents SET created_at = :at WHERE id = :id", id=doc_id, at=created)
                docs[name].append(doc_id)
    served = "UPDATE knowledge_bases SET last_dispatched_at = now() - interval '1 hour' WHERE name = :name"
    await execute(db, served, name="served-long-ago")
    return docs


async def test_predicted_positions_match_the_claim_order(db: Database) -> None:
    docs = await _build_queue(db)
    # Two documents in retry backoff. One becomes due before the claims: the oldest document of all,
    # it makes its never-served KB go first, although the KB's other due document is the newest of all.
    # The other stays in backoff throughout.
    (returning, newest), waiting = docs["never-served-b"][:2], docs["never-served-a"][-1]
    for doc_id in (returning, waiting):
        await execute(db, "UPDATE documents SET available_at = now() + interval '1 hour' WHERE id = :id", id=doc_id)
    await execute(db, "UPDATE documents SET created_at = now() - interval '1 minute' WHERE id = :id", id=returning)
    await execute(db, "UPDATE documents SET created_at = now() + interval '1 minute' WHERE id = :id", id=newest)
    # Free slots and no recent start: an ETA only for those that would start at once.
    await execute(db, "INSERT INTO processors (id, hostname, pid, concurrency) VALUES ('p1', 'test', 1, 4)")
    everyone = [doc_id for ids in docs.values() for doc_id in ids]

    before = await _estimate(db, everyone)
    due = [doc_id for doc_id in everyone if doc_id not in (returning, waiting)]
    assert sorted(before[d].position for d in due) == list(range(len(due)))
    assert {d: before[d].eta_s for d in due} == {d: (0.0 if before[d].position < 4 else None) for d in due}
    for backoff in (before[returning], before[waiting]):
        # It would start at once if due, so it starts when its backoff ends.
        assert backoff.eta_s is None if backoff.position >= 4 else 3500 < (backoff.eta_s or 0) <= 3600

    await execute(db, "UPDATE documents SET available_at = now() WHERE id = :id", id=returning)
    predicted = {d: e.position for d, e in (await _estimate(db, everyone)).items() if d != waiting}
    # Once due, the returning document stands where it was told it would.
    assert predicted[returning] == before[returning].position
    assert sorted(predicted.values()) == list(range(len(predicted)))

    claimed = 0
    while True:
        async with db.transaction() as conn:
            lease = await lifecycle.claim_next(conn, owner="test")
        if lease is None:
            break
        assert predicted.pop(lease.document_id) == claimed, f"claim {claimed} took a document predicted elsewhere"
        claimed += 1
        now = await _estimate(db, [*predicted, waiting])
        assert {d: now[d].position for d in predicted} == {d: p - claimed for d, p in predicted.items()}
        for doc_id in predicted:
            assert now[doc_id].eta_s == round(now[doc_id].position * queue_position.RATE_WINDOW_S / claimed, 1)
    assert claimed == len(everyone) - 1 and not predicted

    # Alone in the queue but in backoff: first in line, and not before its backoff ends.
    last = (await _estimate(db, [waiting]))[waiting]
    assert last.position == 0
    assert last.eta_s is not None and 3500 < last.eta_s <= 3600


async def test_only_queued_documents_get_an_estimate(db: Database) -> None:
    docs = await _build_queue(db)
    async with db.transaction() as conn:
        lease = await lifecycle.claim_next(conn, owner="test")
    assert lease is not None
    queued = [doc_id for ids in docs.values() for doc_id in ids if doc_id != lease.document_id]
    got = await _estimate(db, [*queued, lease.document_id, uuid.uuid4()])
    assert set(got) == set(queued)
    assert await _estimate(db, []) == {}
