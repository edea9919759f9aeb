"""The processor service against real Postgres, S3 and Qdrant: happy path, dedup, reprocessing, delete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import jsonschema
import pytest
from sqlalchemy import text

from shared.db import worker_database
from shared.events import event_schema
from shared.lifecycle import _COLS as DOCUMENT_COLUMNS
from shared.lifecycle import requeue_event
from shared.settings import Settings
from shared.vectorstore import QdrantVectorStore
from tests.support.api_helpers import create_kb, fetch_all, upload
from tests.support.processor_harness import deliver_due, post_event, processor_client, wait_for

MARKDOWN = b"# Lighthouses\n\nThe Eddystone Lighthouse stands on dangerous rocks south of Plymouth.\n"


@pytest.fixture
async def lighthouses(api: httpx.AsyncClient) -> tuple[str, str]:
    """lighthouses.md uploaded to a new knowledge base: (kb id, document id)."""
    kb = await create_kb(api)
    return kb, (await upload(api, kb, "lighthouses.md", MARKDOWN)).json()["id"]


async def test_markdown_goes_through_every_stage_to_ready(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, lighthouses: tuple[str, str]
) -> None:
    kb, doc_id = lighthouses
    async with processor_client(fast_settings, vectors=vectors) as (client, state):
        doc = await wait_for(fast_settings, doc_id, {"ready", "failed"}, client=client)
        assert doc["status"] == "ready", doc["error"]
        assert doc["chunk_count"] >= 1 and doc["attempts"] == 1 and doc["processed_at"] is not None
        assert doc["lease_owner"] is None
        assert await vectors.count(doc_id) == doc["chunk_count"]
        hits = await vectors.search(kb, await state.embedder.embed_query("Eddystone lighthouse Plymouth"), 3)
        assert hits[0].document_id == doc_id
    events = await fetch_all(
        fast_settings, "SELECT type, payload FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc_id
    )
    stages = [e["payload"]["data"]["stage"] for e in events if e["type"] == "document.stage_changed"]
    assert stages == ["downloading", "extracting", "chunking", "embedding", "indexing"]
    assert events[-1]["type"] == "document.indexed"
    for event in events:
        jsonschema.validate(event["payload"], event_schema(event["type"]), format_checker=jsonschema.FormatChecker())
    attempts = await fetch_all(
        fast_settings, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=doc_id
    )
    assert [a["outcome"] for a in attempts] == ["ready"]
    assert (await api.get(f"/v1/documents/{doc_id}")).json()["status"] == "ready"


async def test_same_event_ten_times_processes_once_and_reprocessing_leaves_no_stale_points(
    fast_settings: Settings, vectors: QdrantVectorStore, lighthouses: tuple[str, str]
) -> None:
    kb, doc_id = lighthouses
    [event] = await fetch_all(fast_settings, "SELECT payload FROM outbox WHERE aggregate_id = :id", id=doc_id)
    async with processor_client(fast_settings, vectors=vectors) as (client, _state):
        responses = await asyncio.gather(*(post_event(client, fast_settings, event["payload"]) for _ in range(10)))
        codes = sorted(r.status_code for r in responses)
        # Exactly one delivery is noted; the rest are duplicates (a busy processor never refuses).
        assert codes == [200] * 9 + [202], codes
        assert {r.json()["result"] for r in responses if r.status_code == 200} <= {"duplicate"}
        first = await wait_for(fast_settings, doc_id, {"ready"})
        for _ in range(10):
            redelivered = await post_event(client, fast_settings, event["payload"])
            assert redelivered.status_code == 200 and redelivered.json()["result"] == "duplicate"
        points_v1 = await vectors.count(doc_id)
        assert points_v1 == first["chunk_count"]
        again = await post_event(client, fast_settings, event["payload"])
        assert again.status_code == 200 and again.json()["result"] == "duplicate"

        # Reprocess (e.g. a requeue): the new version replaces the old points, none left behind.
        db = worker_database(fast_settings.database_url, service="test", max_connections=1)
        async with db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        text(f"UPDATE documents SET status = 'queued' WHERE id = :id RETURNING {DOCUMENT_COLUMNS}"),
                        {"id": doc_id},
                    )
                )
                .mappings()
                .one()
            )
            await requeue_event(conn, row)
        await db.dispose()
        second = await wait_for(fast_settings, doc_id, {"ready"}, client=client)
        # Lease versions come from one sequence (docs/documents-change.md): monotonic, not consecutive.
        assert second["version"] > first["version"]
        assert await vectors.count(doc_id) == second["chunk_count"]
        hits = await vectors.search(kb, [0.0] * 383 + [1.0], 50)
        assert {h.version for h in hits if h.document_id == doc_id} == {second["version"]}


async def test_delete_removes_points_object_and_row(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, lighthouses: tuple[str, str]
) -> None:
    kb, doc_id = lighthouses
    async with processor_client(fast_settings, vectors=vectors) as (client, state):
        await wait_for(fast_settings, doc_id, {"ready"}, client=client)
        assert (await api.delete(f"/v1/documents/{doc_id}")).status_code == 202
        statuses = await deliver_due(client, fast_settings)
        assert statuses == [200]
        assert await vectors.count(doc_id) == 0
        assert not await state.deps.store.exists(f"kb/{kb}/{doc_id}")
    assert (await api.get(f"/v1/documents/{doc_id}")).status_code == 404
    [row] = await fetch_all(fast_settings, "SELECT deleted_at FROM documents WHERE id = :id", id=doc_id)
    assert row["deleted_at"] is not None
    types = [
        r["type"]
        for r in await fetch_all(
            fast_settings, "SELECT type FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc_id
        )
    ]
    assert types[-1] == "document.deleted"
    # The name is free again for a new upload.
    assert (await upload(api, kb, "lighthouses.md", MARKDOWN)).status_code == 201


async def test_corrupt_and_encrypted_pdfs_fail_with_their_codes(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, corpus: Path
) -> None:
    kb = await create_kb(api)
    encrypted = await upload(api, kb, "locked.pdf", (corpus / "encrypted/password-user-password.pdf").read_bytes())
    corrupt = await upload(
        api, kb, "cut.pdf", (corpus / "corrupt/truncated-64k-dense-passage-retrieval.pdf").read_bytes()
    )
    async with processor_client(fast_settings, vectors=vectors) as (client, _state):
        locked = await wait_for(fast_settings, encrypted.json()["id"], {"failed", "ready"}, client=client)
        cut = await wait_for(fast_settings, corrupt.json()["id"], {"failed", "ready"}, client=client)
    assert locked["error"]["code"] == "pdf_encrypted" and locked["error"]["retryable"] is False
    assert locked["attempts"] == 1
    assert cut["error"]["code"] in {"corrupt_file", "empty_text"}
    failed = await api.get(f"/v1/documents/{encrypted.json()['id']}")
    assert failed.json()["error"]["code"] == "pdf_encrypted"
