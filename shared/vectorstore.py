"""The vector index: one ``VectorStore`` interface, implemented on Qdrant (server, local path or memory)."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings

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


class VectorStore(Protocol):
    """Chunk vectors per document version; ids are deterministic so every write is idempotent."""

    async def ensure_collection(self, dim: int, *, model: str | None = None) -> None: ...
    async def upsert_chunks(
        self,
        document_id: uuid.UUID | str,
        kb_id: uuid.UUID | str,
        version: int,
        filename: str | None,
        chunks: Sequence[ChunkLike],
        vectors: Sequence[Sequence[float]],
        *,
        trim_tail: bool = True,
        index: IndexTag | None = None,
    ) -> int: ...
    async def delete_other_versions(self, document_id: uuid.UUID | str, keep_version: int) -> None: ...
    async def delete_older_versions(self, document_id: uuid.UUID | str, version: int) -> None: ...
    async def delete_document(self, document_id: uuid.UUID | str) -> None: ...
    async def delete_knowledge_base(self, kb_id: uuid.UUID | str) -> None: ...
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


class QdrantVectorStore:
    """``VectorStore`` on qdrant-client: a server URL, a local path (one process only) or ``:memory:``.

    Local mode runs the synchronous client on one dedicated thread: qdrant's "async" local client
    does its brute-force search and SQLite writes inside the event loop.
    """

    def __init__(
        self,
        location: str,
        *,
        embedding_model: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._location = location
        self._model = embedding_model
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._is_remote = location.startswith(("http://", "https://"))
        self._remote: Any = None
        self._local: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._known: set[str] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> QdrantVectorStore:
        location = settings.qdrant_url if not settings.is_local_qdrant else str(settings.qdrant_path)
        return cls(location, embedding_model=settings.embedding_model)

    @property
    def location(self) -> str:
        return self._location

    def collection_for(self, dim: int, model: str | None = None) -> str:
        """The collection of ``model`` (default: the server's model) at ``dim``."""
        return collection_name(model or self._model, dim)

    async def ensure_collection(self, dim: int, *, model: str | None = None) -> None:
        """Create the model's collection for ``dim`` (cosine, payload indexes) if it doesn't exist."""
        name = self.collection_for(dim, model)
        if name in self._known:
            return
        from qdrant_client import models

        if not await self._call("collection_exists", collection_name=name):
            try:
                await self._call(
                    "create_collection",
                    collection_name=name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
            except ProcessingError:
                # Another process may have created it first; only a still-missing collection is an error.
                if not await self._call("collection_exists", collection_name=name):
                    raise
            if self._is_remote:
                # Local mode ignores payload indexes (it scans), so they only matter on a server.
                for field, schema in (
                    ("knowledge_base_id", models.PayloadSchemaType.KEYWORD),
                    ("document_id", models.PayloadSchemaType.KEYWORD),
                    ("generation", models.PayloadSchemaType.INTEGER),
                ):
                    await self._call(
                        "create_payload_index", collection_name=name, field_name=field, field_schema=schema
                    )
        self._known.add(name)

    async def upsert_chunks(
        self,
        document_id: uuid.UUID | str,
        kb_id: uuid.UUID | str,
        version: int,
        filename: str | None,
        chunks: Sequence[ChunkLike],
        vectors: Sequence[Sequence[float]],
        *,
        trim_tail: bool = True,
        index: IndexTag | None = None,
    ) -> int:
        """Write one point per chunk; re-running it leaves exactly the same point set.

        ``trim_tail=False`` is for all but the last of several calls that write one version in chunk
        order: a middle call must not delete the chunks the next calls write. ``index`` says which
        generation (and model's collection) the points belong to; None: generation 1, the server's model.
        """
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return 0
        from qdrant_client import models

        dim = len(vectors[0])
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
                    "knowledge_base_id": str(kb_id),
                    "document_id": str(document_id),
                    "version": version,
                    "chunk_no": chunk.chunk_no,
                    "text": chunk.text,
                    "page": chunk.page,
                    "heading": chunk.heading,
                    "filename": filename,
                    **tags,
                },
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        for start in range(0, len(points), UPSERT_BATCH):
            await self._call("upsert", collection_name=name, points=points[start : start + UPSERT_BATCH], wait=True)
        if not trim_tail:
            return len(points)
        # A re-run that produced fewer chunks must not leave the old tail behind.
        highest = max(chunk.chunk_no for chunk in chunks)
        stale = _document_filter(
            document_id,
            models.FieldCondition(key="version", match=models.MatchValue(value=version)),
            models.FieldCondition(key="chunk_no", range=models.Range(gt=highest)),
        )
        await self._call("delete", collection_name=name, points_selector=models.FilterSelector(filter=stale), wait=True)
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

        await self._delete_everywhere(
            models.Filter(
                must=[models.FieldCondition(key="knowledge_base_id", match=models.MatchValue(value=str(kb_id)))]
            )
        )

    async def search(
        self, kb_id: uuid.UUID | str, vector: Sequence[float], limit: int, *, index: IndexTag | None = None
    ) -> list[SearchHit]:
        """The ``limit`` chunks of knowledge base ``kb_id`` closest to ``vector``, of one generation.

        Only the collection of ``index``'s model is searched, filtered to its generation: a result
        list can never mix models or generations.
        """
        from qdrant_client import models

        name = self.collection_for(len(vector), index.embedding_model if index is not None else None)
        if name not in self._known and not await self._call("collection_exists", collection_name=name):
            return []
        generation = index.generation if index is not None else 1
        same: list[Any] = [models.FieldCondition(key="generation", match=models.MatchValue(value=generation))]
        if generation == 1:
            # Points written before generations existed have no ``generation``: they are generation 1's.
            same.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="generation")))
        only_kb = models.Filter(
            must=[
                models.FieldCondition(key="knowledge_base_id", match=models.MatchValue(value=str(kb_id))),
                models.Filter(should=same),
            ]
        )
        response = await self._call(
            "query_points",
            collection_name=name,
            query=[float(x) for x in vector],
            query_filter=only_kb,
            limit=limit,
            with_payload=True,
        )
        return [_hit(point) for point in response.points]

    async def count(self, document_id: uuid.UUID | str | None = None) -> int:
        """Points of one document (or all points) across every kbingest collection."""
        count_filter = _document_filter(document_id) if document_id is not None else None
        total = 0
        for name in await self._collections():
            result = await self._call("count", collection_name=name, count_filter=count_filter, exact=True)
            total += int(result.count)
        return total

    async def health(self) -> None:
        """Raise ``ProcessingError(INDEX_UNAVAILABLE)`` unless the engine answers."""
        await self._call("get_collections")

    async def close(self) -> None:
        """Release the client (and, in local mode, the storage lock)."""
        self._closed = True
        if self._remote is not None:
            remote, self._remote = self._remote, None
            await remote.close()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            if self._local is not None:
                await asyncio.get_running_loop().run_in_executor(executor, self._close_local)
            executor.shutdown(wait=False)

    async def _collections(self) -> list[str]:
        response = await self._call("get_collections")
        return sorted(c.name for c in response.collections if c.name.startswith(COLLECTION_PREFIX))

    async def _delete_everywhere(self, selector_filter: Any) -> None:
        from qdrant_client import models

        for name in await self._collections():
            await self._call(
                "delete", collection_name=name, points_selector=models.FilterSelector(filter=selector_filter), wait=True
            )

    async def _call(self, method: str, /, **kwargs: Any) -> Any:
        if self._closed:
            raise ProcessingError(ErrorCode.INDEX_UNAVAILABLE, "the vector store is closed")
        try:
            if self._is_remote:
                return await getattr(await self._remote_client(), method)(**kwargs)
            call: Callable[[], Any] = functools.partial(self._local_call, method, kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._local_executor(), call)
        except ProcessingError:
            raise
        except Exception as exc:
            raise ProcessingError(
                ErrorCode.INDEX_UNAVAILABLE, f"qdrant {method} failed ({self._where()}): {type(exc).__name__}: {exc}"
            ) from exc

    async def _remote_client(self) -> Any:
        if self._remote is None:
            from qdrant_client import AsyncQdrantClient

            # The constructor checks the server version with a blocking HTTP call: keep it off the loop.
            self._remote = await asyncio.to_thread(
                functools.partial(
                    AsyncQdrantClient, url=self._location, api_key=self._api_key, timeout=max(1, int(self._timeout_s))
                )
            )
        return self._remote

    def _local_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            # One thread: the local engine (SQLite) must always be used from the thread that opened it.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-local")
        return self._executor

    def _local_call(self, method: str, kwargs: dict[str, Any]) -> Any:
        if self._local is None:
            from qdrant_client import QdrantClient

            if self._location == MEMORY:
                self._local = QdrantClient(location=MEMORY)
            else:
                self._local = QdrantClient(path=self._location)
        return getattr(self._local, method)(**kwargs)

    def _close_local(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            local.close()

    def _where(self) -> str:
        return self._location if self._is_remote or self._location == MEMORY else f"local path {self._location}"


def _document_filter(document_id: uuid.UUID | str | None, *must: Any, must_not: Sequence[Any] = ()) -> Any:
    from qdrant_client import models

    conditions: list[Any] = list(must)
    if document_id is not None:
        conditions.insert(0, models.FieldCondition(key="document_id", match=models.MatchValue(value=str(document_id))))
    return models.Filter(must=conditions, must_not=list(must_not) or None)


def _hit(point: Any) -> SearchHit:
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
