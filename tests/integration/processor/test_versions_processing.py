"""Replacements through the real processor app, S3 and Qdrant: activation purges, supersede, delete.

docs/documents-change.md: each row's points are stored under its own id; the previous serving
build's points go after the activation commits; a superseded build is purged by a polling
processor; a document's deletion purges the points of every build and the file of every version.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.processor.extraction.elements import Element
from shared import lifecycle
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.vectorstore import QdrantVectorStore
from tests.support.pipeline_helpers import create_document, create_kb, fetch, fetch_one, open_db, stored_content
from tests.support.processor_harness import processor_client, wait_for

DEADLINE_S = 120.0


async def plain_text(path: str, media_type: str) -> list[Element]:
    with open(path, encoding="utf-8") as handle:
        return [Element(text=handle.read(), kind="NarrativeText", page=None, heading=None)]


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 0.2, "stale_after_s": 5.0, "retry_base_s": 0.05, "version_retention": 1}
    )


@pytest.fixture
async def vectors(fast_settings: Settings) -> AsyncIterator[QdrantVectorStore]:
    store = QdrantVectorStore(":memory:", embedding_model=fast_settings.embedding_model)
    yield store
    await store.close()


@pytest.fixture
async def db(fast_settings: Settings) -> AsyncIterator[Database]:
    database = open_db(fast_settings, max_connections=2)
    yield database
    await database.dispose()


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _replace(db: Database, doc: uuid.UUID, values: dict[str, Any]) -> lifecycle.ReplaceOutcome:
    async with db.transaction() as conn:
        outcome = await lifecycle.replace_content(conn, doc, values=values)
    assert outcome.kind == "replaced"
    return outcome


async def _build(db: Database, doc: uuid.UUID, version: int) -> uuid.UUID:
    row = await fetch_one(
        db, "SELECT id FROM documents WHERE parent_id = :id AND content_version = :v", id=doc, v=version
    )
    return uuid.UUID(str(row["id"]))


async def test_replacements_activate_purge_the_old_build_and_delete_purges_every_version(
    fast_settings: Settings, vectors: QdrantVectorStore, db: Database
) -> None:
    store = ObjectStore.from_settings(fast_settings)
    kb = await create_kb(db)
    doc = await create_document(db, store, kb, content=b"Version one: the keeper lit the lamp at dusk.\n")
    v1_key = (await fetch_one(db, "SELECT object_key FROM documents WHERE id = :id", id=doc))["object_key"]
    async with processor_client(fast_settings, extractor=plain_text, vectors=vectors) as (client, _state):
        first = await wait_for(fast_settings, str(doc), {"ready", "failed"}, client=client)
        assert first["status"] == "ready" and await vectors.count(doc) == first["chunk_count"]

        v2 = await stored_content(store, kb, b"Version two: the keeper logged the passing ships.\n")
        await _replace(db, doc, v2)
        build2 = await _build(db, doc, 2)
        done = await wait_for(fast_settings, str(build2), {"ready", "failed"}, client=client)
        assert done["status"] == "ready", done["error"]
        parent = await fetch_one(db, "SELECT served_by, object_key, status FROM documents WHERE id = :id", id=doc)
        assert (parent["served_by"], parent["object_key"], parent["status"]) == (build2, v2["object_key"], "ready")

        async def old_points_gone() -> bool:
            return await vectors.count(doc) == 0

        await _eventually(old_points_gone, "the first version's points to be purged")
        assert await vectors.count(build2) == done["chunk_count"]
        assert await store.exists(v1_key), "VERSION_RETENTION=1 keeps the previous version's file"

        # A replacement superseded while pending: fenced, its points purged by a polling processor.
        v3 = await stored_content(store, kb, b"Version three: never served.\n")
        await _replace(db, doc, v3)
        build3 = await _build(db, doc, 3)
        v4 = await stored_content(store, kb, b"Version four: the keeper trimmed the wicks.\n")
        superseding = await _replace(db, doc, v4)
        assert superseding.obsolete_keys == [v3["object_key"]]
        for key in superseding.obsolete_keys:  # what the API does after commit
            await store.delete(key)
        build4 = await _build(db, doc, 4)

        async def superseded_purged() -> bool:
            row = await fetch_one(db, "SELECT deleted_at FROM documents WHERE id = :id", id=build3)
            return row["deleted_at"] is not None and await vectors.count(build3) == 0

        await _eventually(superseded_purged, "the superseded build to be purged")
        done4 = await wait_for(fast_settings, str(build4), {"ready", "failed"}, client=client)
        assert done4["status"] == "ready", done4["error"]

        async def activation_purged() -> bool:
            return await vectors.count(build2) == 0 and not await store.exists(v1_key)

        await _eventually(activation_purged, "the second build's points and the first version's file to go")
        versions = await fetch(db, "SELECT version, status FROM document_versions WHERE document_id = :id", id=doc)
        assert {r["version"]: r["status"] for r in versions} == {
            1: "purged",
            2: "retained",
            3: "superseded",
            4: "active",
        }
        tombstoned = await fetch_one(db, "SELECT status, deleted_at FROM documents WHERE id = :id", id=build2)
        assert tombstoned["status"] == "ready" and tombstoned["deleted_at"] is not None
        assert await store.exists(v2["object_key"]) and await store.exists(v4["object_key"])

        async with db.transaction() as conn:
            assert await lifecycle.request_delete(conn, doc) is not None
        await wait_for(fast_settings, str(doc), {"deleting"}, client=client)

        async def deleted() -> bool:
            row = await fetch_one(db, "SELECT deleted_at FROM documents WHERE id = :id", id=doc)
            return row["deleted_at"] is not None

        await _eventually(deleted, "the deletion's purge")
        for row_id in (doc, build2, build3, build4):
            assert await vectors.count(row_id) == 0
        for key in (v1_key, v2["object_key"], v3["object_key"], v4["object_key"]):
            assert not await store.exists(key), key
        live = await fetch(db, "SELECT id FROM documents WHERE parent_id = :id AND deleted_at IS NULL", id=doc)
        assert live == []
