"""An upload racing the deletion of its knowledge base (issue 12, section 3).

Either the deletion sees the new document and marks it ``deleting`` with the others, or the upload
sees the deleted KB and answers 404 with its object removed: never a live document in a deleted KB.
Each interleaving is forced with a lock the test holds from its own session, and every wait is on
a condition read from ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from services.processor.extraction.elements import Element
from shared.db import asyncpg_dsn
from shared.internal_auth import internal_secret
from shared.settings import Settings
from shared.vector_remote import RemoteVectorStore
from shared.vectorstore import EmbeddedChunks, QdrantVectorStore, VectorStore
from tests.conftest import _client_for
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload
from tests.support.poll import eventually
from tests.support.processor_harness import deliver_due, post_event, processor_client

TEXT = b"Every page of this knowledge base goes when the knowledge base goes.\n" * 20
DEADLINE_S = 60.0

# Documents that still count as content of a knowledge base that is gone.
LIVE_IN_DELETED_KB = """
    SELECT d.id, d.status FROM documents AS d JOIN knowledge_bases AS k ON k.id = d.knowledge_base_id
    WHERE k.deleted_at IS NOT NULL AND d.deleted_at IS NULL AND d.status <> 'deleting'
"""

# An API session of this database waiting on a lock while running a statement that contains :fragment.
WAITING_API_SESSION = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'kbingest.api'
      AND wait_event_type = 'Lock' AND position(:fragment IN query) > 0
"""


@pytest.fixture
async def session(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """The test's own Postgres session: holds the locks that force an interleaving."""
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def watcher(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """Reads pg_stat_activity outside any transaction (a transaction sees one frozen snapshot of it)."""
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    yield conn
    await conn.close()


def _api_waits_in(watcher: asyncpg.Connection, fragment: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await watcher.fetchval(WAITING_API_SESSION.replace(":fragment", "$1"), fragment))

    return check


def _done_or(
    task: asyncio.Task[httpx.Response], waiting: Callable[[], Awaitable[bool]]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return task.done() or await waiting()

    return check


async def _interleave(
    watcher: asyncpg.Connection,
    blocker: asyncpg.transaction.Transaction,
    first: Coroutine[Any, Any, httpx.Response],
    *,
    waits_in: str,
    then: Coroutine[Any, Any, httpx.Response],
) -> tuple[httpx.Response, httpx.Response]:
    """Run ``first`` until it waits on the test's lock in a statement containing ``waits_in``, then ``then``
    until it finished or waits on the KB lock (which of the two is what the test is about); then release
    the test's lock (``blocker``) and return both answers, ``first``'s first."""
    first_task = asyncio.create_task(first)
    await eventually(
        _api_waits_in(watcher, waits_in),
        timeout_s=DEADLINE_S,
        every_s=0.02,
        what=f"the first request waits in {waits_in!r}",
    )
    second_task = asyncio.create_task(then)
    await eventually(
        _done_or(second_task, _api_waits_in(watcher, "knowledge_bases")),
        timeout_s=DEADLINE_S,
        every_s=0.02,
        what="the second request ran or waits on the knowledge base",
    )
    await blocker.rollback()
    return await asyncio.gather(first_task, second_task)


async def test_upload_committing_while_its_kb_is_deleted_is_deleted_with_it(
    api: httpx.AsyncClient, settings: Settings, session: asyncpg.Connection, watcher: asyncpg.Connection
) -> None:
    """The upload has checked its KB and waits to insert; the deletion runs meanwhile."""
    kb = await create_kb(api)
    blocker = session.transaction()
    await blocker.start()
    # An uncommitted twin holds the name: the upload's INSERT waits on it, after the upload read its KB.
    await session.execute(
        "INSERT INTO documents (id, knowledge_base_id, filename, original_filename, media_type, size_bytes, "
        "sha256, object_key, max_attempts) VALUES ($1, $2, 'race.txt', 'race.txt', 'text/plain', 1, 'x', $3, 3)",
        uuid.uuid4(),
        uuid.UUID(kb),
        f"blocker/{uuid.uuid4()}",
    )
    # The upload waits to insert its row; then the deletion runs. Fixed: the deletion waits for the
    # upload's KB lock. Broken: it finishes without seeing the upload.
    uploaded, deleted = await _interleave(
        watcher,
        blocker,
        upload(api, kb, "race.txt", TEXT),
        waits_in="INSERT INTO documents",
        then=api.delete(f"/v1/knowledge-bases/{kb}"),
    )

    assert deleted.status_code == 202, deleted.text
    assert uploaded.status_code == 201, uploaded.text
    assert await fetch_all(settings, LIVE_IN_DELETED_KB) == []
    (row,) = await fetch_all(settings, "SELECT status FROM documents WHERE id = :id", id=uploaded.json()["id"])
    assert row["status"] == "deleting"
    requested = await fetch_all(
        settings,
        "SELECT 1 FROM outbox WHERE type = 'document.delete_requested' AND aggregate_id = :id",
        id=uploaded.json()["id"],
    )
    assert len(requested) == 1


async def test_upload_committing_after_the_deletion_began_is_refused(
    api: httpx.AsyncClient, settings: Settings, session: asyncpg.Connection, watcher: asyncpg.Connection
) -> None:
    """The deletion has locked the KB and waits on one of its documents; the upload commits meanwhile."""
    kb = await create_kb(api)
    first = (await upload(api, kb, "first.txt", TEXT)).json()
    blocker = session.transaction()
    await blocker.start()
    # The deletion marks every document deleting: holding the first one keeps its transaction open.
    await session.execute("SELECT 1 FROM documents WHERE id = $1 FOR UPDATE", uuid.UUID(first["id"]))
    # The deletion waits on the first document; then the upload runs. Fixed: the upload waits for the
    # deletion's KB lock. Broken: it commits into the doomed KB.
    deleted, uploaded = await _interleave(
        watcher,
        blocker,
        api.delete(f"/v1/knowledge-bases/{kb}"),
        waits_in="UPDATE documents",
        then=upload(api, kb, "second.txt", TEXT + b"second"),
    )

    assert deleted.status_code == 202, deleted.text
    assert_error_shape(uploaded, 404, "not_found")
    assert await fetch_all(settings, LIVE_IN_DELETED_KB) == []
    assert await object_keys(settings) == [f"kb/{kb}/{first['id']}"]


class _Chunk:
    def __init__(self, n: int) -> None:
        self.chunk_no, self.text, self.page, self.heading = n, f"chunk {n}", None, None


async def _stray_points(vectors: VectorStore, kb: str, count: int = 3) -> uuid.UUID:
    """Points under a document id no row knows (what a writer that lost its lease may leave behind)."""
    document = uuid.uuid4()
    chunks = [_Chunk(n) for n in range(count)]
    embeddings = [[1.0, float(n), 0.5, 0.25] for n in range(count)]
    await vectors.upsert_chunks(EmbeddedChunks(document, kb, 1, "stray.txt", chunks, embeddings))
    return document


async def test_knowledge_base_deleted_purges_its_points_by_kb_id(api: httpx.AsyncClient, settings: Settings) -> None:
    """The processor handles knowledge_base.deleted: every point of the KB goes, another KB's stay."""
    doomed, kept = await create_kb(api), await create_kb(api)
    vectors = QdrantVectorStore(":memory:", embedding_model=settings.embedding_model)
    try:
        stray = await _stray_points(vectors, doomed)
        other = await _stray_points(vectors, kept)
        assert (await api.delete(f"/v1/knowledge-bases/{doomed}")).status_code == 202
        async with processor_client(settings, extractor=_no_text, vectors=vectors) as (client, _):
            assert await deliver_due(client, settings) == [200]
            assert await vectors.count(stray) == 0
            assert await vectors.count(other) == 3
            (event,) = await fetch_all(settings, "SELECT payload FROM outbox WHERE type = 'knowledge_base.deleted'")
            again = await post_event(client, settings, event["payload"])
            assert again.status_code == 200 and again.json()["result"] == "duplicate"
            # An event naming a live KB (forged or misrouted) never empties it.
            live = {**event["payload"], "id": str(uuid.uuid4()), "data": {**event["payload"]["data"]}}
            live["data"]["knowledge_base_id"] = kept
            refused = await post_event(client, settings, live)
            assert refused.status_code == 200 and refused.json()["result"] == "noop"
            assert await vectors.count(other) == 3
    finally:
        await vectors.close()


async def test_the_api_owned_store_deletes_by_kb_id_for_other_processes(settings: Settings, api_key: str) -> None:
    """Local Qdrant mode: the processor's purge by KB goes through the API's signed internal route."""
    app = create_app(settings)
    async for _ in _client_for(app, api_key):
        store = RemoteVectorStore("http://api", internal_secret(settings), transport=httpx.ASGITransport(app=app))
        try:
            doomed, kept = str(uuid.uuid4()), str(uuid.uuid4())
            stray, other = await _stray_points(store, doomed), await _stray_points(store, kept)
            await store.delete_knowledge_base(doomed)
            assert (await store.count(stray), await store.count(other)) == (0, 3)
        finally:
            await store.close()


async def _no_text(path: str, media_type: str) -> list[Element]:
    return []
