"""Fencing, heartbeats under a blocked stage, backpressure, hand-back on shutdown, embedder outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from shared.vectorstore import QdrantVectorStore
from tests.integration.processor_service.conftest import GatedExtractor
from tests.support.api_helpers import create_kb, fetch_all, upload
from tests.support.fake_embedder import fake_embedder
from tests.support.processor_harness import deliver_due, document, processor_client, until_idle, wait_for

TEXT = b"Some plain text about tide pools and the animals that live in them.\n"


async def _stage_events(settings: Settings, doc_id: str) -> list[str]:
    rows = await fetch_all(
        settings,
        "SELECT payload FROM outbox WHERE aggregate_id = :id AND type = 'document.stage_changed' ORDER BY seq",
        id=doc_id,
    )
    return [r["payload"]["data"]["stage"] for r in rows]


@asynccontextmanager
async def _blocked_in_extraction(
    api: httpx.AsyncClient, settings: Settings, vectors: QdrantVectorStore, gated: GatedExtractor
) -> AsyncIterator[tuple[str, httpx.AsyncClient, Any]]:
    """A new document in a processor whose extraction waits at ``gated`` for the block: (id, client, state)."""
    kb = await create_kb(api)
    doc_id = (await upload(api, kb, "tides.txt", TEXT)).json()["id"]
    async with processor_client(settings, extractor=gated, vectors=vectors) as (client, state):
        await deliver_due(client, settings)
        await asyncio.wait_for(gated.entered.wait(), 30)
        yield doc_id, client, state


async def test_blocked_stage_keeps_heartbeating_and_is_not_rescued(
    api: httpx.AsyncClient,
    fast_settings: Settings,
    vectors: QdrantVectorStore,
    gated: GatedExtractor,
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with _blocked_in_extraction(api, fast_settings, vectors, gated) as (doc_id, client, _state):
        beats = set()
        blocked_until = time.monotonic() + 5 * fast_settings.heartbeat_interval_s + 0.5
        while time.monotonic() < blocked_until:
            beats.add((await document(fast_settings, doc_id))["heartbeat_at"])
            await asyncio.sleep(fast_settings.heartbeat_interval_s / 2)
        doc = await document(fast_settings, doc_id)
        assert doc["status"] == "processing" and doc["stage"] == "extracting"
        assert len(beats) >= 3, "the heartbeat must keep moving while a stage is blocked"
        gated.gate.set()
        doc = await wait_for(fast_settings, doc_id, {"ready", "failed"}, client=client)
    assert doc["status"] == "ready" and doc["attempts"] == 1
    # The work's logs carry the document and the event that started it, not the long-gone delivery request.
    ready = [line for line in capfd.readouterr().out.splitlines() if "document.ready" in line and doc_id in line]
    assert ready and "event_id=" in ready[0] and "request_id=" not in ready[0], ready


async def test_fencing_a_lost_lease_stops_the_work_and_writes_nothing(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, gated: GatedExtractor
) -> None:
    async with _blocked_in_extraction(api, fast_settings, vectors, gated) as (doc_id, _client, state):
        # Someone else (a rescuer) takes the document: the epoch moves behind the worker's back.
        await fetch_all(
            fast_settings,
            "UPDATE documents SET lease_epoch = lease_epoch + 1, lease_owner = 'rescuer' WHERE id = :id",
            id=doc_id,
        )
        await until_idle(state)  # the heartbeat must cancel work whose lease is gone
        gated.gate.set()
        await asyncio.sleep(5 * fast_settings.heartbeat_interval_s)
    doc = await document(fast_settings, doc_id)
    assert doc["status"] == "processing" and doc["stage"] == "extracting" and doc["lease_owner"] == "rescuer"
    assert await _stage_events(fast_settings, doc_id) == ["downloading", "extracting"]
    assert await vectors.count(doc_id) == 0
    events = await fetch_all(
        fast_settings,
        "SELECT type FROM outbox WHERE aggregate_id = :id AND type IN ('document.indexed', 'document.failed')",
        id=doc_id,
    )
    assert events == []


async def _one_slot_two_queued(api: httpx.AsyncClient, settings: Settings) -> tuple[Settings, str, str]:
    """A processor with one work slot and two documents queued for it, oldest first."""
    kb = await create_kb(api)
    first = (await upload(api, kb, "a.txt", TEXT)).json()["id"]
    second = (await upload(api, kb, "b.txt", TEXT + b"more")).json()["id"]
    return settings.model_copy(update={"processor_concurrency": 1}), first, second


async def test_saturated_processor_notes_events_and_fills_the_freed_slot(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, gated: GatedExtractor
) -> None:
    one_slot, first, second = await _one_slot_two_queued(api, fast_settings)
    async with processor_client(one_slot, extractor=gated, vectors=vectors) as (client, state):
        # Busy is not a refusal: events are wake-ups and the second document waits in the queue.
        assert await deliver_due(client, one_slot) == [202, 202]
        await asyncio.wait_for(gated.entered.wait(), 30)
        assert (await document(one_slot, first))["status"] == "processing"
        assert (await document(one_slot, second))["status"] == "queued"
        assert state.worker.in_flight == 1
        gated.gate.set()
        for doc_id in (first, second):
            doc = await wait_for(one_slot, doc_id, {"ready", "failed"}, client=client)
            assert doc["status"] == "ready" and doc["attempts"] == 1
    attempts = await fetch_all(
        one_slot,
        "SELECT document_id::text AS id, started_at, finished_at FROM document_attempts ORDER BY started_at",
    )
    assert [a["id"] for a in attempts] == [first, second]
    assert attempts[1]["started_at"] >= attempts[0]["finished_at"], "one slot: the second starts when the first ends"


async def test_shutdown_hands_back_the_document_in_progress(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, gated: GatedExtractor
) -> None:
    one_slot, first, second = await _one_slot_two_queued(api, fast_settings)
    async with processor_client(one_slot, extractor=gated, vectors=vectors) as (client, _state):
        await deliver_due(client, one_slot)
        await asyncio.wait_for(gated.entered.wait(), 30)
        assert (await document(one_slot, first))["status"] == "processing"
        assert (await document(one_slot, second))["status"] == "queued"
        # Leaving the block shuts the processor down (SIGTERM path) while extraction is blocked.
    doc = await document(one_slot, first)
    assert doc["status"] == "queued" and doc["lease_owner"] is None and doc["attempts"] == 0
    types = [
        r["type"]
        for r in await fetch_all(one_slot, "SELECT type FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=first)
    ]
    assert types[-1] == "document.requeued"
    [attempt] = await fetch_all(one_slot, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=first)
    assert attempt["outcome"] == "handed_back"
    processors = await fetch_all(one_slot, "SELECT stopped_at, ready_at FROM processors")
    assert processors and all(p["stopped_at"] is not None and p["ready_at"] is not None for p in processors)


async def test_embedder_down_retries_then_fails_and_retry_works_when_back(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore
) -> None:
    kb = await create_kb(api)
    with fake_embedder() as provider:
        remote = fast_settings.model_copy(
            update={"embedding_model": "openai/text-embedding-3-small", "embedding_api_base": provider.base_url}
        )
        async with processor_client(remote, extractor=_plain_text_extractor, vectors=vectors) as (client, _state):
            provider.mode = "down"  # the provider goes away after the processor started
            doc_id = (await upload(api, kb, "tides.txt", TEXT)).json()["id"]
            doc = await wait_for(remote, doc_id, {"failed", "ready"}, client=client)
            assert doc["status"] == "failed" and doc["attempts"] == doc["max_attempts"]
            assert doc["error"]["code"] == "max_attempts_exceeded"
            assert doc["error"]["cause"]["code"] == "embedder_unavailable"
            attempts = await fetch_all(
                remote, "SELECT outcome, error FROM document_attempts WHERE document_id = :id ORDER BY id", id=doc_id
            )
            assert [a["outcome"] for a in attempts] == ["retry_scheduled"] * (doc["max_attempts"] - 1) + ["failed"]
            assert all(a["error"]["code"] == "embedder_unavailable" for a in attempts)

            provider.mode = "ok"
            assert (await api.post(f"/v1/documents/{doc_id}/retry")).status_code == 202
            doc = await wait_for(remote, doc_id, {"failed", "ready"}, client=client)
    assert doc["status"] == "ready" and doc["error"] is None and doc["attempts"] == 1


async def test_embedding_deadline_is_per_batch_not_per_document(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore
) -> None:
    """A big document whose batches each finish in time is not cut off; a stuck batch still is."""
    kb = await create_kb(api)
    # ~230 chunks of ≤ 1,500 characters = 4 batches of 64 for a remote model: 4 s at 1 s per batch.
    line = "about tide pools, anemones and the crabs that hide under rocks. " * 5
    paragraphs = [f"Paragraph {i} {line}" for i in range(900)]
    big = (await upload(api, kb, "big.txt", "\n\n".join(paragraphs).encode())).json()["id"]
    with fake_embedder() as provider:
        provider.delay_s = 1.0
        remote = fast_settings.model_copy(
            update={
                "embedding_model": "openai/text-embedding-3-small",
                "embedding_api_base": provider.base_url,
                "stage_timeouts": {**fast_settings.stage_timeouts, "embedding": 3.0},
            }
        )
        async with processor_client(remote, extractor=_plain_text_extractor, vectors=vectors) as (client, _state):
            doc = await wait_for(remote, big, {"failed", "ready"}, client=client)
            assert doc["status"] == "ready", doc["error"]
            assert doc["attempts"] == 1 and doc["chunk_count"] > 3 * 64
            assert provider.calls >= 4, "the whole document took longer than the deadline, in batches"

            provider.delay_s = 15.0
            stuck = (await upload(api, kb, "stuck.txt", TEXT)).json()["id"]
            await deliver_due(client, remote)
            doc = await wait_for(remote, stuck, {"failed"}, client=client)
    attempts = await fetch_all(
        remote, "SELECT error FROM document_attempts WHERE document_id = :id ORDER BY id", id=stuck
    )
    assert attempts[0]["error"]["code"] == "embed_timeout"
    assert "made no progress for 3s (0 of 1 done)" in attempts[0]["error"]["message"]


async def _plain_text_extractor(path: str, media_type: str) -> list:  # type: ignore[type-arg]
    from services.processor.extraction.elements import Element

    with open(path, encoding="utf-8") as handle:
        return [Element(text=handle.read(), kind="NarrativeText", page=None, heading=None)]
