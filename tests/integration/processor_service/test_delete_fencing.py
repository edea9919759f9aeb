"""Deletion against writers that lost their lease, and purges that fail half-way (issue 12, section 3).

Zombie vectors: Qdrant knows no lease, so a holder whose document was deleted and purged while it
was writing must take its write back (and the reconciler re-purges settled tombstones). Purge
acknowledged before it happened: a failed purge must leave no inbox record, so the redelivery purges.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from services.processor.extraction.elements import Element
from services.reconciler.tombstones import TombstoneRepurge
from shared import lifecycle
from shared.db import Database, worker_database
from shared.errors import DocumentError, ErrorCode, ProcessingError
from shared.settings import Settings
from shared.storage import StorageUnavailable
from shared.vectorstore import EmbeddedChunks, QdrantVectorStore
from tests.support.api_helpers import create_kb, fetch_all, upload
from tests.support.processor_harness import deliver_due, document, post_event, processor_client, until_idle, wait_for

TEXT = b"Lighthouse keepers trimmed the wicks every evening and logged passing ships.\n"


async def plain_text(path: str, media_type: str) -> list[Element]:
    with open(path, encoding="utf-8") as handle:
        return [Element(text=handle.read(), kind="NarrativeText", page=None, heading=None)]


class Wrapping:
    """A fake around a real store: what the fake does not define reaches ``inner``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ServerSideIndex(Wrapping):
    """Fake vector store: an upsert, once sent, lands when the server gets to it (``gate``), whatever the
    client does meanwhile — as a request already on the wire does when its caller gives up on it."""

    _inner: QdrantVectorStore

    def __init__(self, inner: QdrantVectorStore) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.landed = asyncio.Event()

    async def upsert_chunks(self, embedded: EmbeddedChunks, **kwargs: Any) -> int:
        self.entered.set()
        on_the_wire = asyncio.ensure_future(self._apply(embedded, **kwargs))
        return await asyncio.shield(on_the_wire)

    async def _apply(self, embedded: EmbeddedChunks, **kwargs: Any) -> int:
        await self.gate.wait()
        written = await self._inner.upsert_chunks(embedded, **kwargs)
        self.landed.set()
        return written


class DeletesDown(Wrapping):
    """Fake store whose ``delete_method`` raises ``outage()`` while ``down`` (Qdrant or S3 unreachable
    during a purge)."""

    def __init__(self, inner: Any, delete_method: str, outage: Callable[[], Exception]) -> None:
        super().__init__(inner)
        self._delete_method = delete_method
        self._outage = outage
        self.down = False

    def __getattr__(self, name: str) -> Any:
        real = super().__getattr__(name)
        if name != self._delete_method:
            return real

        async def delete(*args: Any) -> None:
            if self.down:
                raise self._outage()
            await real(*args)

        return delete


@pytest.mark.parametrize(
    "heartbeat_interval_s",
    [
        pytest.param(0.2, id="heartbeat-cancels-the-attempt-mid-write"),
        # No beat within the test: only the check after the write can see the loss.
        pytest.param(60.0, id="write-completes-then-the-lease-check"),
    ],
)
async def test_a_write_that_lands_after_the_purge_is_taken_back(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, heartbeat_interval_s: float
) -> None:
    settings = fast_settings.model_copy(
        update={"heartbeat_interval_s": heartbeat_interval_s, "stale_after_s": 5 * heartbeat_interval_s}
    )
    index = ServerSideIndex(vectors)
    kb = await create_kb(api)
    doc_id = (await upload(api, kb, "keepers.txt", TEXT)).json()["id"]
    async with processor_client(settings, extractor=plain_text, vectors=index) as (client, state):  # type: ignore[arg-type]
        await deliver_due(client, settings)
        await asyncio.wait_for(index.entered.wait(), 60)
        assert (await api.delete(f"/v1/documents/{doc_id}")).status_code == 202
        assert await deliver_due(client, settings) == [200]
        assert (await document(settings, doc_id))["deleted_at"] is not None, "the purge ran before the write landed"

        index.gate.set()
        await asyncio.wait_for(index.landed.wait(), 60)
        await until_idle(state)
        assert await vectors.count(doc_id) == 0, "the late write's points outlived the deletion"
    [attempt] = await fetch_all(settings, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=doc_id)
    assert attempt["outcome"] == "deleted"
    types = [
        r["type"]
        for r in await fetch_all(settings, "SELECT type FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc_id)
    ]
    assert types[-1] == "document.deleted" and "document.indexed" not in types


@pytest.mark.parametrize("failing", ["vector_store", "object_store"])
async def test_a_failed_purge_is_not_acknowledged_and_the_redelivery_purges(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, failing: str
) -> None:
    index = DeletesDown(
        vectors,
        "delete_document",
        lambda: ProcessingError(ErrorCode.INDEX_UNAVAILABLE, "qdrant delete failed: connection refused (fake)"),
    )
    kb = await create_kb(api)
    doc_id = (await upload(api, kb, "keepers.txt", TEXT)).json()["id"]
    async with processor_client(fast_settings, extractor=plain_text, vectors=index) as (client, state):  # type: ignore[arg-type]
        await wait_for(fast_settings, doc_id, {"ready"}, client=client)
        assert await vectors.count(doc_id) >= 1
        objects = DeletesDown(
            state.deps.store,
            "delete",
            lambda: StorageUnavailable("object store unreachable: connection refused (fake)"),
        )
        # The fake wraps the real store; only the purge (the state's) meets it, the worker keeps the real one.
        state.deps = replace(state.deps, store=objects)
        fake = index if failing == "vector_store" else objects
        fake.down = True

        assert (await api.delete(f"/v1/documents/{doc_id}")).status_code == 202
        [pending] = await fetch_all(
            fast_settings,
            "SELECT payload FROM outbox WHERE aggregate_id = :id AND type = 'document.delete_requested'",
            id=doc_id,
        )
        refused = await post_event(client, fast_settings, pending["payload"])
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] in {"index_unavailable", "storage_unavailable"}
        assert refused.headers["Retry-After"]
        assert (await document(fast_settings, doc_id))["deleted_at"] is None
        assert (
            await fetch_all(
                fast_settings,
                "SELECT 1 FROM processor_inbox WHERE document_id = :id AND event_type = 'document.delete_requested'",
                id=doc_id,
            )
            == []
        )

        fake.down = False
        # The relay retries the very same event (it was never answered 2xx).
        assert await deliver_due(client, fast_settings) == [200]
        again = await post_event(client, fast_settings, pending["payload"])
        assert again.status_code == 200 and again.json()["result"] == "duplicate"
        assert await vectors.count(doc_id) == 0
        assert not await state.deps.store.exists(f"kb/{kb}/{doc_id}")
    doc = await document(fast_settings, doc_id)
    assert doc["status"] == "deleting" and doc["deleted_at"] is not None
    types = [
        r["type"]
        for r in await fetch_all(
            fast_settings, "SELECT type FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc_id
        )
    ]
    assert types.count("document.deleted") == 1 and types[-1] == "document.deleted"


@dataclass(frozen=True)
class _Chunk:
    chunk_no: int
    text: str
    page: int | None = None
    heading: str | None = None


class KeepOpen(Wrapping):
    """The fixture's store, lent to the step without letting it close it."""

    async def close(self) -> None:
        return None


@dataclass
class Repurge:
    """The reconciler's re-purge step on the fixture's vector store, with a holder's own database."""

    db: Database
    step: TombstoneRepurge
    vectors: QdrantVectorStore
    settings: Settings

    async def settle(self, sql: str, **params: Any) -> None:
        """Age rows past the settle time with ``sql`` (which sets a time to now() - :age)."""
        await fetch_all(self.settings, sql, age=self.step.settle_s + 1, **params)


@pytest.fixture
async def repurge(fast_settings: Settings, vectors: QdrantVectorStore) -> AsyncIterator[Repurge]:
    db = worker_database(fast_settings.database_url, service="test", max_connections=1)
    step = TombstoneRepurge(db, fast_settings, vectors=lambda: KeepOpen(vectors))  # type: ignore[arg-type,return-value]
    try:
        yield Repurge(db, step, vectors, fast_settings)
    finally:
        await db.dispose()


async def _claim(db: Database, doc: uuid.UUID, owner: str) -> lifecycle.Lease:
    async with db.transaction() as conn:
        lease = await lifecycle.claim(conn, doc, owner=owner)
    assert lease is not None
    return lease


def _landed(document_id: uuid.UUID, kb: str, version: int) -> EmbeddedChunks:
    """A holder's index write that reached the vector store (two chunks)."""
    return EmbeddedChunks(
        document_id=document_id,
        kb_id=kb,
        version=version,
        filename="landed.txt",
        chunks=[_Chunk(0, "landed"), _Chunk(1, "landed too")],
        vectors=[[1.0] + [0.0] * 383, [0.0, 1.0] + [0.0] * 382],
    )


async def test_reconciler_repurges_a_settled_tombstone_once(api: httpx.AsyncClient, repurge: Repurge) -> None:
    """A holder killed right after its write (no check, no take-back): the tombstone's re-purge removes it."""
    kb = await create_kb(api)
    taken = uuid.UUID((await upload(api, kb, "taken.txt", TEXT)).json()["id"])
    idle = uuid.UUID((await upload(api, kb, "idle.txt", TEXT + b"idle")).json()["id"])
    lease = await _claim(repurge.db, taken, "killed-processor")
    for doc in (taken, idle):
        async with repurge.db.transaction() as conn:
            assert await lifecycle.request_delete(conn, doc) is not None
        async with repurge.db.transaction() as conn:
            assert await lifecycle.finish_delete(conn, doc)
    # The killed holder's last request lands after the purge.
    await repurge.vectors.upsert_chunks(_landed(taken, kb, lease.version))
    assert await repurge.step.run() == {}, "a tombstone younger than the settle time is left alone"
    await repurge.settle(
        "UPDATE documents SET deleted_at = now() - make_interval(secs => :age) WHERE id = ANY(:ids)", ids=[taken, idle]
    )
    # Only the tombstone whose lease was taken from a holder qualifies.
    assert await repurge.step.run() == {"tombstone_repurged": 1}
    assert await repurge.vectors.count(taken) == 0
    assert await repurge.step.run() == {}, "each tombstone is re-purged once"


async def test_reconciler_repurges_the_points_a_failed_document_was_left_with(
    api: httpx.AsyncClient, repurge: Repurge
) -> None:
    """An index write that landed while its answer was lost (fault campaign, seed 93595): the document
    ended failed with that attempt's points; once settled they are deleted, a newer version's are kept."""
    kb = await create_kb(api)
    doc = uuid.UUID((await upload(api, kb, "cut-off.txt", TEXT)).json()["id"])
    lease = await _claim(repurge.db, doc, "cut-off-processor")
    await repurge.vectors.upsert_chunks(_landed(doc, kb, lease.version))
    async with repurge.db.transaction() as conn:
        error = DocumentError(ErrorCode.CORRUPT_FILE, "failed for good after its write landed")
        assert await lifecycle.fail_or_retry(conn, lease, error, stage="indexing", retry_delay_s=0) == "failed"
    # A writer under a higher version (a retry's claim) is not this failure's.
    await repurge.vectors.upsert_chunks(_landed(doc, kb, lease.version + 1))
    assert await repurge.vectors.count(doc) == 4
    assert await repurge.step.run() == {}, "a failure younger than the settle time is left alone"
    await repurge.settle(
        "UPDATE document_attempts SET finished_at = now() - make_interval(secs => :age) WHERE document_id = :id", id=doc
    )
    assert await repurge.step.run() == {"failed_repurged": 1}
    assert await repurge.vectors.count(doc) == 2, "only the failed attempt's version is deleted"
    assert await repurge.step.run() == {}, "each failure is re-purged once"
