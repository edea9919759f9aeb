"""The reconciler against content versions (real Postgres and S3): kept files, skipped build rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.reconciler import repairs
from services.reconciler.sweep import ObjectSweep
from services.reconciler.tombstones import TombstoneRepurge
from shared import lifecycle
from shared.db import Database
from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import (
    age_document,
    claim,
    create_document,
    create_kb,
    execute,
    fetch,
    open_db,
    replace_content,
    stored_content,
)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_db(settings, max_connections=2)
    yield database
    await database.dispose()


async def _ready(db: Database, row_id: uuid.UUID) -> None:
    lease = await claim(db, row_id)
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, lease, chunk_count=1, retention=1) is not None


async def _replace(db: Database, store: ObjectStore, kb: uuid.UUID, doc: uuid.UUID, body: bytes) -> str:
    values = await stored_content(store, kb, body)
    assert (await replace_content(db, doc, values)).kind == "replaced"
    return str(values["object_key"])


async def test_the_orphan_sweep_keeps_a_retained_version_and_deletes_a_purged_one(
    db: Database, store: ObjectStore
) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, store, kb, content=b"one")
    await _ready(db, doc)
    first_key = f"kb/{kb}/{doc}"
    second_key = await _replace(db, store, kb, doc, b"two")
    await _ready(db, (await _build_ids(db, doc))[-1])
    third_key = await _replace(db, store, kb, doc, b"three")
    # Not through activation: a purged version whose file was left behind (a processor crashed after commit).
    await execute(db, "UPDATE document_versions SET status = 'purged' WHERE document_id = :id AND version = 1", id=doc)

    sweep = ObjectSweep(db, store, leader_id="test", grace_s=0.0, page_keys=1000, min_round_s=0.0)
    counts = await sweep.run()

    assert counts["orphan_object"] == 1
    assert not await store.exists(first_key)
    assert await store.exists(second_key), "the active version's file (the build row's object)"
    assert await store.exists(third_key), "a pending replacement's file"
    # The document row now names the second version; once the third is active the second is only retained.
    await _ready(db, (await _build_ids(db, doc))[-1])
    await execute(db, "UPDATE documents SET deleted_at = now() - interval '1 hour' WHERE parent_id = :id", id=doc)
    assert (await sweep.run())["orphan_object"] == 0
    assert await store.exists(second_key), "VERSION_RETENTION keeps the previous version's file"


async def _build_ids(db: Database, doc: uuid.UUID) -> list[uuid.UUID]:
    rows = await fetch(db, "SELECT id FROM documents WHERE parent_id = :id ORDER BY content_version", id=doc)
    return [r["id"] for r in rows]


async def test_lost_dispatch_and_stuck_delete_scans_skip_build_rows(db: Database, store: ObjectStore) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    await _ready(db, doc)
    await _replace(db, store, kb, doc, b"b")
    build = (await _build_ids(db, doc))[-1]
    await execute(db, "UPDATE outbox SET dead_at = now() - interval '1 hour', created_at = now() - interval '1 hour'")
    await age_document(db, build, 3600)

    assert (await repairs.reemit_lost(db, grace_s=1.0)) == {}
    await _replace(db, store, kb, doc, b"c")
    await age_document(db, build, 3600)
    assert (await repairs.finish_stuck_deletes(db, grace_s=1.0)) == {}


class RecordingVectors:
    """Records which rows' points a re-purge deletes (the deletes themselves are tested with Qdrant elsewhere)."""

    def __init__(self, *, failures: int = 0) -> None:
        self.deleted: list[uuid.UUID] = []
        self.failures = failures

    async def delete_document(self, document_id: uuid.UUID) -> None:
        if self.failures:
            self.failures -= 1
            raise ProcessingError(ErrorCode.INDEX_UNAVAILABLE, "qdrant is down")
        self.deleted.append(document_id)

    async def close(self) -> None:
        return None


@pytest.fixture
async def replaced_doc(db: Database, store: ObjectStore) -> uuid.UUID:
    """A ready document whose replacement became ready: its activation stopped serving the document row."""
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    await _ready(db, doc)
    await _replace(db, store, kb, doc, b"d")
    await _ready(db, (await _build_ids(db, doc))[-1])
    return doc


async def test_the_row_an_activation_stopped_serving_is_re_purged_once_settled(
    settings: Settings, db: Database, replaced_doc: uuid.UUID
) -> None:
    recorded = RecordingVectors()
    step = TombstoneRepurge(db, settings, vectors=lambda: recorded)  # type: ignore[arg-type,return-value]
    assert await step.run() == {}, "an activation younger than the settle time is left alone"

    step.settle_s = 0.0
    assert await step.run() == {"replaced_repurged": 1}
    assert recorded.deleted == [replaced_doc], "the document row's own points: it has no tombstone to find them by"
    assert await step.run() == {}, "each activation is re-purged once"


async def test_a_re_purge_that_fails_is_tried_again_on_the_next_pass(
    settings: Settings, db: Database, replaced_doc: uuid.UUID
) -> None:
    recorded = RecordingVectors(failures=1)
    step = TombstoneRepurge(db, settings, vectors=lambda: recorded)  # type: ignore[arg-type,return-value]
    step.settle_s = 0.0
    assert await step.run() == {}, "the vector store failed: nothing counted, the cursor stays before the row"
    assert await step.run() == {"replaced_repurged": 1}
    assert recorded.deleted == [replaced_doc]
    assert await step.run() == {}
