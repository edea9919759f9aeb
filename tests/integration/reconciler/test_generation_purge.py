"""The reconciler deletes the points of generations no rollback can return to (real Postgres and Qdrant).

After a second re-index generation 1 is dropped: the rollback returns to generation 2 only. Its points,
the document row's own included (no build row names them), go; the active generation's, a building
one's and the rollback target's never do.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.processor.chunking import Chunk
from services.reconciler.generation_purge import GenerationPurge
from shared import generations, lifecycle
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.vector_remote import RemoteVectorStore
from shared.vectorstore import EmbeddedChunks, IndexTag, QdrantVectorStore, VectorStore
from tests.support.pipeline_helpers import claim, create_document, create_kb, execute, fetch, fetch_one

VECTOR = [1.0, 0.0, 0.0, 0.0]
CHUNKS = [Chunk(chunk_no=i, text=f"chunk {i}", page=None, heading=None) for i in range(2)]


@asynccontextmanager
async def _qdrant(settings: Settings) -> AsyncIterator[QdrantVectorStore]:
    """The test's local Qdrant, opened between the step's runs (a local path has one user at a time)."""
    vectors = QdrantVectorStore.from_settings(settings)
    try:
        yield vectors
    finally:
        await vectors.close()


async def _reindex(db: Database, settings: Settings, kb: uuid.UUID, doc: uuid.UUID, chunk_size: int) -> uuid.UUID:
    """Start a re-index and run the document's build to ready (the switch happens in that transaction)."""
    async with db.transaction() as conn:
        generation = await generations.start(
            conn, kb, generations.resolve({"chunk_size": chunk_size}, settings), max_attempts=3
        )
    build = await fetch_one(
        db, "SELECT id FROM documents WHERE parent_id = :id AND generation = :g", id=doc, g=generation
    )
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, await claim(db, build["id"]), chunk_count=len(CHUNKS)) is not None
    return uuid.UUID(str(build["id"]))


Rows = dict[int, uuid.UUID]


async def _reindexed_twice(db: Database, store: ObjectStore, settings: Settings) -> tuple[uuid.UUID, Rows]:
    """A KB with one ready document, re-indexed twice, each row's points written: the row of each generation."""
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, await claim(db, doc), chunk_count=len(CHUNKS)) is not None
    rows = {1: doc, 2: await _reindex(db, settings, kb, doc, 600), 3: await _reindex(db, settings, kb, doc, 900)}
    async with _qdrant(settings) as vectors:
        for generation, row in rows.items():
            # Generation 1 as the document row wrote it before its KB was re-indexed: no index tag.
            index = IndexTag(generation, settings.embedding_model) if generation > 1 else None
            await vectors.upsert_chunks(EmbeddedChunks(row, kb, 1, "a.txt", CHUNKS, [VECTOR] * 2, index=index))
    return kb, rows


async def _settle(db: Database, step: GenerationPurge, kb: uuid.UUID) -> None:
    """Age the KB's retirements past the settle time (every one by as much: their order is kept)."""
    await execute(
        db,
        "UPDATE index_generations SET finished_at = finished_at - make_interval(secs => :age) "
        "WHERE knowledge_base_id = :kb",
        age=step.settle_s + 1,
        kb=kb,
    )


async def _points(settings: Settings, rows: Rows) -> dict[int, int]:
    async with _qdrant(settings) as vectors:
        return {generation: await vectors.count(row) for generation, row in rows.items()}


async def _purged(db: Database, kb: uuid.UUID) -> list[int]:
    found = await fetch(
        db,
        "SELECT generation FROM index_generations WHERE knowledge_base_id = :kb AND points_purged_at IS NOT NULL",
        kb=kb,
    )
    return [row["generation"] for row in found]


def _step(db: Database, settings: Settings) -> GenerationPurge:
    return GenerationPurge(db, settings, vectors=functools.partial(QdrantVectorStore.from_settings, settings))


async def test_a_dropped_generation_loses_its_points_and_no_usable_one_does(
    db: Database, store: ObjectStore, settings: Settings
) -> None:
    kb, rows = await _reindexed_twice(db, store, settings)
    step = _step(db, settings)
    assert await step.run() == {}, "a retirement younger than the settle time is left alone"
    assert await _points(settings, rows) == {1: 2, 2: 2, 3: 2}

    await _settle(db, step, kb)
    assert await step.run() == {"generation_points_purged": 1}
    assert await _points(settings, rows) == {1: 0, 2: 2, 3: 2}, "the document row's own points are gone"
    assert await _purged(db, kb) == [1]
    async with _qdrant(settings) as vectors:
        hits = await vectors.search(kb, VECTOR, 10, index=IndexTag(3, settings.embedding_model))
    assert {hit.document_id for hit in hits} == {str(rows[3])}, "search still answers from the active generation"
    assert await step.run() == {}, "a purged generation is not purged again"

    # Rolling back to generation 2 retires 3 (now the rollback target); a new re-index builds generation 4.
    async with db.transaction() as conn:
        plan = await generations.rollback_plan(conn, kb)
        assert plan is not None and plan[0] == 2
        assert await generations.rollback(conn, kb, *plan)
        await generations.start(conn, kb, generations.resolve({"chunk_size": 700}, settings), max_attempts=3)
    await _settle(db, step, kb)
    assert await step.run() == {}, "active (2), rollback target (3) and building (4) keep their points"
    assert await _points(settings, rows) == {1: 0, 2: 2, 3: 2}


async def test_a_vector_store_that_fails_leaves_the_generation_to_the_next_pass(
    db: Database, store: ObjectStore, settings: Settings
) -> None:
    kb, rows = await _reindexed_twice(db, store, settings)
    down: list[VectorStore] = [RemoteVectorStore("http://127.0.0.1:9", "no-api-listens-here")]
    step = GenerationPurge(
        db, settings, vectors=lambda: down.pop() if down else QdrantVectorStore.from_settings(settings)
    )
    await _settle(db, step, kb)

    assert await step.run() == {}
    assert await _purged(db, kb) == [], "not recorded while the vector store is down"
    assert await _points(settings, rows) == {1: 2, 2: 2, 3: 2}

    assert await step.run() == {"generation_points_purged": 1}
    assert await _purged(db, kb) == [1]
    assert await _points(settings, rows) == {1: 0, 2: 2, 3: 2}
