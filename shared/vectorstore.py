"""The vector index: one ``VectorStore`` interface, implemented on Qdrant (server, local path or memory)."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient, models

T = TypeVar("T")

# Fixed forever: point ids must stay stable across releases or re-indexing would duplicate points.
POINT_NAMESPACE: Final = uuid.UUID("6f1d1a52-3c1e-5c8e-9a57-0c5b1e6d2f10")
COLLECTION_PREFIX: Final = "kbingest_"
COLLECTION_NAME_MAX: Final = 200
UPSERT_BATCH: Final = 256
DEFAULT_TIMEOUT_S: Final = 30.0
MEMORY: Final = ":memory:"


class ChunkLike(Protocol):
    """What the store needs of a chunk (``services.processor.chunking.Chunk`` fits)."""

    @property
    def chunk_no(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def heading(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One matching chunk of a search, best first."""

    document_id: str
    knowledge_base_id: str
    version: int
    chunk_no: int
    text: str
    score: float
    filename: str | None
    page: int | None
    heading: str | None
    generation: int = 1


@dataclass(frozen=True, slots=True)
class IndexTag:
    """The index generation points belong to: its model picks the collection, the payload records the rest.

    Points written before generations existed carry no ``generation``: they count as generation 1.
    """

    generation: int
    embedding_model: str
    # model|dimension|chunk_size/chunk_overlap (shared.generations.IndexSettings.fingerprint).
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class EmbeddedChunks:
    """One document version's chunks and their vectors (chunk i has vector i), as ``upsert_chunks`` writes them.

    ``index`` says which generation (and model's collection) the points belong to; None: generation 1,
    the server's model.
    """

    document_id: uuid.UUID | str
    kb_id: uuid.UUID | str
    version: int
    filename: str | None
    chunks: Sequence[ChunkLike]
    vectors: Sequence[Sequence[float]]
    index: IndexTag | None = None

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.vectors):
            raise ValueError(f"{len(self.chunks)} chunks but {len(self.vectors)} vectors")


class VectorStore(Protocol):
    """Chunk vectors per document version; ids are deterministic so every write is idempotent."""

    async def ensure_collection(self, dim: int, *, model: str | None = None) -> None: ...
    async def upsert_chunks(self, embedded: EmbeddedChunks, *, trim_tail: bool = True) -> int: ...
    async def delete_other_versions(self, document_id: uuid.UUID | str, keep_version: int) -> None: ...
    async def delete_older_versions(self, document_id: uuid.UUID | str, version: int) -> None: ...
    async def delete_document(self, document_id: uuid.UUID | str) -> None: ...
    async def delete_knowledge_base(self, kb_id: uuid.UUID | str) -> None: ...
    async def delete_generation(self, kb_id: uuid.UUID | str, generation: int) -> None: ...
    async def search(
        self, kb_id: uuid.UUID | str, vector: Sequence[float], limit: int, *, index: IndexTag | None = None
    ) -> list[SearchHit]: ...
    async def count(self, document_id: uuid.UUID | str | None = None) -> int: ...
    async def health(self) -> None: ...
    async def close(self) -> None: ...


def point_id(document_id: uuid.UUID | str, version: int, chunk_no: int) -> uuid.UUID:
    """The id of a chunk's point: the same document, version and chunk always land on the same point."""
    return uuid.uuid5(POINT_NAMESPACE, f"{document_id}:{version}:{chunk_no}")


def collection_name(embedding_model: str, dim: int) -> str:
    """``kbingest_<model>_<dim>``: vectors of different models or sizes never share a collection."""
    slug = re.sub(r"[^a-z0-9]+", "_", embedding_model.lower()).strip("_") or "model"
    suffix = f"_{dim}"
    if len(COLLECTION_PREFIX) + len(slug) + len(suffix) > COLLECTION_NAME_MAX:
        digest = uuid.uuid5(POINT_NAMESPACE, embedding_model).hex[:8]
        slug = slug[: COLLECTION_NAME_MAX - len(COLLECTION_PREFIX) - len(suffix) - 9] + "_" + digest
    return f"{COLLECTION_PREFIX}{slug}{suffix}"


# One operation on the client: every call of the store is written once, against qdrant's async API.
Op = Callable[["AsyncQdrantClient"], Awaitable[T]]


class _LocalEngine:
    """qdrant's local engine (a path or ``:memory:``) on one thread with its own event loop.

    qdrant's async local client does its brute-force search and SQLite writes inside the event loop
    that awaits it: here that is this thread's loop, never the service's. One thread, because the
    engine (SQLite) must always be used from the thread that opened it.
    """

    def __init__(self, location: str) -> None:
        self._location = location
        self._client: AsyncQdrantClient | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qdrant-local", daemon=True)
        self._thread.start()

    async def run(self, op: Op[T]) -> T:
        return await self._on_thread(self._in_thread(op))

    async def _on_thread(self, work: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def _in_thread(self, op: Op[T]) -> T:
        if self._client is None:
            from qdrant_client import AsyncQdrantClient

            if self._location == MEMORY:
                self._client = AsyncQdrantClient(location=MEMORY)
            else:
                self._client = AsyncQdrantClient(path=self._location)
        return await op(self._client)

    async def close(self) -> None:
        """Close the engine (releasing a path's lock), then end the thread."""
        try:
            await self._on_thread(self._close_client())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join)
            self._loop.close()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


@dataclass(kw_only=True, eq=False)
class QdrantVectorStore:
    """``VectorStore`` on qdrant-client: a server URL, a local path (one process only) or ``:memory:``.

    A server's client runs in the caller's event loop; local mode runs on a ``_LocalEngine``. Both run
    the same typed operations (``_call``). ``client``: an async client to use as a server's (tests run
    the server path on ``AsyncQdrantClient(location=":memory:")``, which has the server client's API);
    without one, a server's client is made on first use.
    """

    location: str = field(kw_only=False)
    embedding_model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    client: AsyncQdrantClient | None = field(default=None, repr=False)
    _is_remote: bool = field(init=False, repr=False)
    _local: _LocalEngine | None = field(default=None, init=False, repr=False)
    _known: set[str] = field(default_factory=set, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._is_remote = self.client is not None or self.location.startswith(("http://", "https://"))

    @classmethod
    def from_settings(cls, settings: Settings) -> QdrantVectorStore:
        location = settings.qdrant_url if not settings.is_local_qdrant else str(settings.qdrant_path)
        return cls(location, embedding_model=settings.embedding_model)

    def collection_for(self, dim: int, model: str | None = None) -> str:
        """The collection of ``model`` (default: the server's model) at ``dim``."""
        return collection_name(model or self.embedding_model, dim)

    async def ensure_collection(self, dim: int, *, model: str | None = None) -> None:
        """Create the model's collection for ``dim`` (cosine, payload indexes) if it doesn't exist."""
        name = self.collection_for(dim, model)
        if name in self._known:
            return
        from qdrant_client import models

        exists = functools.partial(_collection_exists, name=name)
        if not await self._call("collection_exists", exists):
            try:
                vectors = models.VectorParams(size=dim, distance=models.Distance.COSINE)
                await self._call("create_collection", lambda c: c.create_collection(name, vectors_config=vectors))
            except ProcessingError:
                # Another process may have created it first; only a still-missing collection is an error.
                if not await self._call("collection_exists", exists):
                    raise
            if self._is_remote:
                # Local mode ignores payload indexes (it scans), so they only matter on a server.
                for field, schema in (
                    ("knowledge_base_id", models.PayloadSchemaType.KEYWORD),
                    ("document_id", models.PayloadSchemaType.KEYWORD),
                    ("generation", models.PayloadSchemaType.INTEGER),
                ):
                    await self._call(
                        "create_payload_index",
                        functools.partial(_create_payload_index, name=name, field=field, schema=schema),
                    )
        self._known.add(name)

    async def upsert_chunks(self, embedded: EmbeddedChunks, *, trim_tail: bool = True) -> int:
        """Write one point per chunk; re-running it leaves exactly the same point set.

        ``trim_tail=False`` is for all but the last of several calls that write one version in chunk
        order: a middle call must not delete the chunks the next calls write.
        """
        if not embedded.chunks:
            return 0
        from qdrant_client import models

        document_id, version, index = embedded.document_id, embedded.version, embedded.index
        dim = len(embedded.vectors[0])
        model = index.embedding_model if index is not None else None
        await self.ensure_collection(dim, model=model)
        name = self.collection_for(dim, model)
        tags: dict[str, Any] = {"generation": index.generation if index is not None else 1}
        if index is not None and index.fingerprint is not None:
            tags["index"] = index.fingerprint
        points = [
            models.PointStruct(
                id=str(point_id(document_id, version, chunk.chunk_no)),
                vector=[float(x) for x in vector],
                payload={
                    "knowledge_base_id": str(embedded.kb_id),
                    "document_id": str(document_id),
                    "version": version,
                    "chunk_no": chunk.chunk_no,
                    "text": chunk.text,
                    "page": chunk.page,
                    "heading": chunk.heading,
                    "filename": embedded.filename,
                    **tags,
                },
            )
            for chunk, vector in zip(embedded.chunks, embedded.vectors, strict=True)
        ]
        for start in range(0, len(points), UPSERT_BATCH):
            batch = functools.partial(_upsert, name=name, points=points[start : start + UPSERT_BATCH])
            await self._call("upsert", batch)
        if not trim_tail:
            return len(points)
        # A re-run that produced fewer chunks must not leave the old tail behind.
        highest = max(chunk.chunk_no for chunk in embedded.chunks)
        stale = _document_filter(
            document_id,
            models.FieldCondition(key="version", match=models.MatchValue(value=version)),
            models.FieldCondition(key="chunk_no", range=models.Range(gt=highest)),
        )
        selector = models.FilterSelector(filter=stale)
        await self._call("delete", lambda c: c.delete(name, points_selector=selector, wait=True))
        return len(points)

    async def delete_other_versions(self, document_id: uuid.UUID | str, keep_version: int) -> None:
        """Remove every point of the document whose version is not ``keep_version``."""
        from qdrant_client import models

        keep = models.FieldCondition(key="version", match=models.MatchValue(value=keep_version))
        await self._delete_everywhere(_document_filter(document_id, must_not=[keep]))

    async def delete_older_versions(self, document_id: uuid.UUID | str, version: int) -> None:
        """Remove the document's points of versions below ``version`` (a newer writer's points survive)."""
        from qdrant_client import models

        older = models.FieldCondition(key="version", range=models.Range(lt=version))
        await self._delete_everywhere(_document_filter(document_id, older))

    async def delete_document(self, document_id: uuid.UUID | str) -> None:
        """Remove every point of the document, in every collection (any model it was indexed with)."""
        await self._delete_everywhere(_document_filter(document_id))

    async def delete_knowledge_base(self, kb_id: uuid.UUID | str) -> None:
        """Remove every point of a knowledge base, in every collection, whatever document wrote it."""
        from qdrant_client import models

        await self._delete_everywhere(models.Filter(must=[_kb_condition(kb_id)]))

    async def delete_generation(self, kb_id: uuid.UUID | str, generation: int) -> None:
        """Remove every point of one index generation of a knowledge base, in every collection, any row's.

        The points search would find with that generation's filter (generation 1 includes the points
        written before generations existed), once it can no longer be rolled back to.
        """
        await self._delete_everywhere(_generation_filter(kb_id, generation))

    async def search(
        self, kb_id: uuid.UUID | str, vector: Sequence[float], limit: int, *, index: IndexTag | None = None
    ) -> list[SearchHit]:
        """The ``limit`` chunks of knowledge base ``kb_id`` closest to ``vector``, of one generation.

        Only the collection of ``index``'s model is searched, filtered to its generation: a result
        list can never mix models or generations.
        """

        name = self.collection_for(len(vector), index.embedding_model if index is not None else None)
        exists = functools.partial(_collection_exists, name=name)
        if name not in self._known and not await self._call("collection_exists", exists):
            return []
        only_kb = _generation_filter(kb_id, index.generation if index is not None else 1)
        query = [float(x) for x in vector]
        response = await self._call(
            "query_points",
            lambda c: c.query_points(name, query=query, query_filter=only_kb, limit=limit, with_payload=True),
        )
        return [_hit(point) for point in response.points]

    async def count(self, document_id: uuid.UUID | str | None = None) -> int:
        """Points of one document (or all points) across every kbingest collection."""
        count_filter = _document_filter(document_id) if document_id is not None else None
        total = 0
        for name in await self._collections():
            result = await self._call("count", functools.partial(_count, name=name, count_filter=count_filter))
            total += result.count
        return total

    async def health(self) -> None:
        """Raise ``ProcessingError(INDEX_UNAVAILABLE)`` unless the engine answers."""
        await self._call("get_collections", lambda c: c.get_collections())

    async def close(self) -> None:
        """Release the client (and, in local mode, the storage lock)."""
        self._closed = True
        if self.client is not None:
            remote, self.client = self.client, None
            await remote.close()
        if self._local is not None:
            local, self._local = self._local, None
            await local.close()

    async def _collections(self) -> list[str]:
        response = await self._call("get_collections", lambda c: c.get_collections())
        return sorted(c.name for c in response.collections if c.name.startswith(COLLECTION_PREFIX))

    async def _delete_everywhere(self, selector_filter: models.Filter) -> None:
        from qdrant_client import models

        selector = models.FilterSelector(filter=selector_filter)
        for name in await self._collections():
            await self._call("delete", functools.partial(_delete, name=name, selector=selector))

    async def _call(self, what: str, op: Op[T]) -> T:
        """Run ``op`` on the server's client or the local engine; any failure is INDEX_UNAVAILABLE."""
        if self._closed:
            raise ProcessingError(ErrorCode.INDEX_UNAVAILABLE, "the vector store is closed")
        try:
            if self._is_remote:
                return await op(await self._remote_client())
            if self._local is None:
                self._local = _LocalEngine(self.location)
            return await self._local.run(op)
        except ProcessingError:
            raise
        except Exception as exc:
            raise ProcessingError(
                ErrorCode.INDEX_UNAVAILABLE, f"qdrant {what} failed ({self._where()}): {type(exc).__name__}: {exc}"
            ) from exc

    async def _remote_client(self) -> AsyncQdrantClient:
        if self.client is None:
            from qdrant_client import AsyncQdrantClient

            # The constructor checks the server version with a blocking HTTP call: keep it off the loop.
            self.client = await asyncio.to_thread(
                functools.partial(
                    AsyncQdrantClient, url=self.location, api_key=self.api_key, timeout=max(1, int(self.timeout_s))
                )
            )
        return self.client

    def _where(self) -> str:
        return self.location if self._is_remote or self.location == MEMORY else f"local path {self.location}"


# Operations used more than once or in a loop (a lambda would capture the loop's variable late).
async def _collection_exists(client: AsyncQdrantClient, *, name: str) -> bool:
    return await client.collection_exists(name)


async def _upsert(client: AsyncQdrantClient, *, name: str, points: list[models.PointStruct]) -> models.UpdateResult:
    return await client.upsert(name, points=points, wait=True)


async def _create_payload_index(
    client: AsyncQdrantClient, *, name: str, field: str, schema: models.PayloadSchemaType
) -> models.UpdateResult:
    return await client.create_payload_index(name, field_name=field, field_schema=schema)


async def _count(client: AsyncQdrantClient, *, name: str, count_filter: models.Filter | None) -> models.CountResult:
    return await client.count(name, count_filter=count_filter, exact=True)


async def _delete(client: AsyncQdrantClient, *, name: str, selector: models.FilterSelector) -> models.UpdateResult:
    return await client.delete(name, points_selector=selector, wait=True)


def _document_filter(
    document_id: uuid.UUID | str | None, *must: models.Condition, must_not: Sequence[models.Condition] = ()
) -> models.Filter:
    from qdrant_client import models

    conditions: list[models.Condition] = list(must)
    if document_id is not None:
        conditions.insert(0, models.FieldCondition(key="document_id", match=models.MatchValue(value=str(document_id))))
    return models.Filter(must=conditions, must_not=list(must_not) or None)


def _kb_condition(kb_id: uuid.UUID | str) -> models.FieldCondition:
    from qdrant_client import models

    return models.FieldCondition(key="knowledge_base_id", match=models.MatchValue(value=str(kb_id)))


def _generation_filter(kb_id: uuid.UUID | str, generation: int) -> models.Filter:
    """The points of one generation of a knowledge base: what search reads, and what a purge of it deletes."""
    from qdrant_client import models

    same: list[models.Condition] = [models.FieldCondition(key="generation", match=models.MatchValue(value=generation))]
    if generation == 1:
        # Points written before generations existed have no ``generation``: they are generation 1's.
        same.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="generation")))
    return models.Filter(must=[_kb_condition(kb_id), models.Filter(should=same)])


def _hit(point: models.ScoredPoint) -> SearchHit:
    payload: dict[str, Any] = point.payload or {}
    page = payload.get("page")
    return SearchHit(
        document_id=str(payload.get("document_id")),
        knowledge_base_id=str(payload.get("knowledge_base_id")),
        version=int(payload.get("version", 0)),
        chunk_no=int(payload.get("chunk_no", 0)),
        text=str(payload.get("text", "")),
        score=float(point.score),
        filename=payload.get("filename"),
        page=int(page) if page is not None else None,
        heading=payload.get("heading"),
        generation=int(payload.get("generation", 1)),
    )
