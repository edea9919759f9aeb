"""The reconciler switches a building generation that ran out of work without a terminal transition."""

from __future__ import annotations

import uuid

from shared import generations, lifecycle
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import claim, create_document, create_kb, execute, fetch, fetch_one
from tests.support.reconcilers import ReconcilerFactory


async def _ready_kb_with_build(db: Database, store: ObjectStore, settings: Settings) -> tuple[uuid.UUID, uuid.UUID]:
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    await execute(db, "UPDATE documents SET status = 'ready', chunk_count = 2 WHERE id = :id", id=doc)
    async with db.transaction() as conn:
        values = generations.resolve({"chunk_size": 600, "chunk_overlap": 60}, settings)
        assert await generations.start(conn, kb, values, max_attempts=3) == 2
    return kb, doc


async def test_a_generation_whose_builds_finished_unseen_is_switched(
    db: Database, store: ObjectStore, settings: Settings, make_reconciler: ReconcilerFactory
) -> None:
    kb, doc = await _ready_kb_with_build(db, store, settings)
    reconciler = make_reconciler()
    assert "generation_switched" not in (await reconciler.run_once()).counts, "its build is still queued"
    # The build finishes by a path that does not call the hook (here: raw SQL).
    await execute(
        db,
        "UPDATE documents SET status = 'ready', chunk_count = 5 WHERE parent_id = :id AND purpose = 'reindex'",
        id=doc,
    )
    assert (await reconciler.run_once()).counts["generation_switched"] == 1
    row = await fetch_one(
        db,
        "SELECT d.chunk_count, b.generation FROM documents d JOIN documents b ON b.id = d.served_by WHERE d.id = :id",
        id=doc,
    )
    assert row == {"chunk_count": 5, "generation": 2}
    states = await fetch(
        db, "SELECT generation, state FROM index_generations WHERE knowledge_base_id = :kb ORDER BY 1", kb=kb
    )
    assert states == [{"generation": 1, "state": "retired"}, {"generation": 2, "state": "active"}]
    assert (await fetch_one(db, "SELECT active_generation FROM knowledge_bases WHERE id = :kb", kb=kb)) == {
        "active_generation": 2
    }
    assert "generation_switched" not in (await reconciler.run_once()).counts


async def test_a_generation_in_which_every_build_failed_is_cancelled_not_switched(
    db: Database, store: ObjectStore, settings: Settings, make_reconciler: ReconcilerFactory
) -> None:
    kb, doc = await _ready_kb_with_build(db, store, settings)
    await execute(db, "UPDATE documents SET status = 'failed' WHERE parent_id = :id", id=doc)
    assert "generation_switched" not in (await make_reconciler().run_once()).counts
    states = await fetch(
        db, "SELECT generation, state FROM index_generations WHERE knowledge_base_id = :kb ORDER BY 1", kb=kb
    )
    assert states == [{"generation": 1, "state": "active"}, {"generation": 2, "state": "cancelled"}]
    assert (await fetch_one(db, "SELECT status, served_by FROM documents WHERE id = :id", id=doc)) == {
        "status": "ready",
        "served_by": None,
    }
    assert (await fetch_one(db, "SELECT status FROM documents WHERE parent_id = :id", id=doc)) == {"status": "deleting"}


async def test_a_document_whose_build_failed_is_retried_by_its_build_and_follows_it(
    db: Database, store: ObjectStore, settings: Settings, make_reconciler: ReconcilerFactory
) -> None:
    kb, doc = await _ready_kb_with_build(db, store, settings)
    await execute(
        db, "UPDATE documents SET status = 'failed', error = '{\"code\": \"x\"}' WHERE parent_id = :id", id=doc
    )
    other = await create_document(db, store, kb)  # a second document, whose build succeeds
    await execute(
        db, "UPDATE documents SET status = 'ready', chunk_count = 1 WHERE id = :id OR parent_id = :id", id=other
    )
    assert (await make_reconciler().run_once()).counts["generation_switched"] == 1
    assert (await fetch_one(db, "SELECT status FROM documents WHERE id = :id", id=doc)) == {"status": "failed"}

    async with db.transaction() as conn:
        retried = await lifecycle.retry_failed(conn, doc)
    assert retried is not None and retried["id"] == doc
    build = await fetch_one(db, "SELECT id, status FROM documents WHERE parent_id = :id", id=doc)
    assert build["status"] == "queued"
    assert (await fetch_one(db, "SELECT status FROM documents WHERE id = :id", id=doc)) == {"status": "failed"}
    lease = await claim(db, build["id"])
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, lease, chunk_count=7) is not None
    assert (await fetch_one(db, "SELECT status, chunk_count FROM documents WHERE id = :id", id=doc)) == {
        "status": "ready",
        "chunk_count": 7,
    }
