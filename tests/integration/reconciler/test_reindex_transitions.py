"""Lifecycle transitions during a re-index, straight through shared.lifecycle on real Postgres."""

from __future__ import annotations

import uuid

from shared import generations, lifecycle
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import claim, create_document, create_kb, fetch_one, stored_content


async def _ready_document_reindexing(
    db: Database, store: ObjectStore, settings: Settings
) -> tuple[uuid.UUID, uuid.UUID, dict[str, uuid.UUID]]:
    """A KB with one ready document and a re-index (generation 2) just started: its build row is queued."""
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    first = await claim(db, doc)
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, first, chunk_count=1) is not None
        await generations.start(conn, kb, generations.resolve({"chunk_size": 600}, settings), max_attempts=3)
    build = await fetch_one(db, "SELECT id FROM documents WHERE parent_id = :id AND purpose = 'reindex'", id=doc)
    return kb, doc, build


async def _replace_and_activate(
    db: Database, store: ObjectStore, kb: uuid.UUID, doc: uuid.UUID, content: bytes
) -> dict[str, object]:
    """Store ``content`` as the document's next version and run its replace build to ready."""
    values = await stored_content(store, kb, content)
    async with db.transaction() as conn:
        assert (await lifecycle.replace_content(conn, doc, values=values)).kind == "replaced"
    replacement = await fetch_one(db, "SELECT id FROM documents WHERE parent_id = :id AND purpose = 'replace'", id=doc)
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, await claim(db, replacement["id"]), chunk_count=2) is not None
    return values


async def test_a_replacement_activated_during_a_build_requeues_the_build_on_the_new_content(
    db: Database, store: ObjectStore, settings: Settings
) -> None:
    kb, doc, build = await _ready_document_reindexing(db, store, settings)
    building = await claim(db, build["id"])  # the build is mid-attempt on the old content

    values = await _replace_and_activate(db, store, kb, doc, b"the second version of this document")
    key = values["object_key"]

    row = await fetch_one(
        db, "SELECT status, sha256, object_key, lease_epoch FROM documents WHERE id = :id", id=build["id"]
    )
    assert (row["status"], row["sha256"], row["object_key"]) == ("queued", values["sha256"], key)
    assert row["lease_epoch"] > building.epoch, "the attempt on the old content is fenced out"
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, building, chunk_count=9) is None
    state = await fetch_one(
        db, "SELECT state FROM index_generations WHERE knowledge_base_id = :kb AND generation = 2", kb=kb
    )
    assert state == {"state": "building"}, "the switch waits for the build on the new content"


async def test_a_rollback_refuses_a_generation_without_the_current_content(
    db: Database, store: ObjectStore, settings: Settings
) -> None:
    kb, doc, build = await _ready_document_reindexing(db, store, settings)
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, await claim(db, build["id"]), chunk_count=2) is not None
    active = await fetch_one(db, "SELECT active_generation FROM knowledge_bases WHERE id = :kb", kb=kb)
    assert active == {"active_generation": 2}
    async with db.transaction() as conn:
        assert await generations.rollback_plan(conn, kb) is not None, "generation 1 holds every document as it is"

    await _replace_and_activate(db, store, kb, doc, b"content replaced after the switch")

    async with db.transaction() as conn:
        try:
            await generations.rollback_plan(conn, kb)
        except generations.RollbackIncomplete as refused:
            assert refused.args == (1, 1)
        else:
            raise AssertionError("a rollback would serve content the document no longer has")
