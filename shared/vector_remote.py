"""VectorStore over the API's signed internal endpoints, for local Qdrant mode.

Qdrant's local mode allows one process per path, so there the API owns the store and other
processes write through it. With ``QDRANT_URL`` set, everyone talks to the Qdrant server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal

import httpx

from shared.errors import ErrorCode, ProcessingError
from shared.internal_auth import internal_secret, sign_request
from shared.settings import Settings
from shared.vector_calls import (
    INTERNAL_PREFIX,
    ChunkJson,
    Count,
    DeleteDocument,
    DeleteGeneration,
    DeleteKnowledgeBase,
    DeleteOlderVersions,
    DeleteOtherVersions,
    EnsureCollection,
    Health,
    Search,
    UpsertChunks,
    VectorCall,
)
from shared.vectorstore import UPSERT_BATCH, EmbeddedChunks, IndexTag, QdrantVectorStore, SearchHit, VectorStore

TIMEOUT: Final = httpx.Timeout(120.0, connect=5.0)
# The body limit of an internal upsert (every other internal call gets MAX_BODY_BYTES). Sized to a
# full batch of UPSERT_BATCH points with the worst JSON: 4096-dim vectors (~24 bytes per float) and
# 1,500-character chunks all escaped as \uXXXX (x6), about 30 MB; the client packs batches below it.
INTERNAL_UPSERT_MAX_BYTES: Final = 32 * 1024 * 1024
# Keys and separators around the chunks and vectors of an upsert body, generously.
ENVELOPE_BYTES: Final = 1024


class RemoteVectorStore:
    """The ``VectorStore`` protocol, each call one signed POST to the API process (shared/vector_calls.py)."""

    def __init__(self, base_url: str, secret: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._secret = secret
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=TIMEOUT,
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )

    async def _call(self, call: VectorCall) -> Any:
        body = call.model_dump_json().encode()
        path = f"{INTERNAL_PREFIX}/{call.path}"
        headers = {"Content-Type": "application/json", **sign_request(self._secret, "POST", path, body)}
        try:
            response = await self._client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProcessingError(ErrorCode.INDEX_UNAVAILABLE, f"vector store (via API) unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ProcessingError(
                ErrorCode.INDEX_UNAVAILABLE,
                f"vector store (via API) answered {response.status_code}: {response.text[:300]}",
            )
        return call.result.validate_python(response.json()["result"])

    async def ensure_collection(self, dim: int, *, model: str | None = None) -> None:
        await self._call(EnsureCollection(dim=dim, model=model))

    async def upsert_chunks(self, embedded: EmbeddedChunks, *, trim_tail: bool = True) -> int:
        """In batches under the endpoint's body limit, in chunk order; only the last one trims the tail."""
        head = UpsertChunks(
            document_id=str(embedded.document_id),
            kb_id=str(embedded.kb_id),
            version=embedded.version,
            filename=embedded.filename,
            index=embedded.index,
            chunks=[],
            vectors=[],
        )
        items = [
            (ChunkJson(chunk_no=c.chunk_no, text=c.text, page=c.page, heading=c.heading), [float(x) for x in v])
            for c, v in zip(embedded.chunks, embedded.vectors, strict=True)
        ]
        budget = INTERNAL_UPSERT_MAX_BYTES - len(head.model_dump_json()) - ENVELOPE_BYTES
        sizes = [len(chunk.model_dump_json()) + len(json.dumps(vector)) for chunk, vector in items]
        spans = list(_spans(sizes, budget))
        written = 0
        for i, (start, end) in enumerate(spans):
            part = items[start:end]
            call = head.model_copy(
                update={
                    "trim_tail": trim_tail and i == len(spans) - 1,
                    "chunks": [chunk for chunk, _ in part],
                    "vectors": [vector for _, vector in part],
                }
            )
            written += await self._call(call)
        return written

    async def delete_other_versions(self, document_id: uuid.UUID | str, keep_version: int) -> None:
        await self._call(DeleteOtherVersions(document_id=str(document_id), keep_version=keep_version))

    async def delete_older_versions(self, document_id: uuid.UUID | str, version: int) -> None:
        await self._call(DeleteOlderVersions(document_id=str(document_id), version=version))

    async def delete_document(self, document_id: uuid.UUID | str) -> None:
        await self._call(DeleteDocument(document_id=str(document_id)))

    async def delete_knowledge_base(self, kb_id: uuid.UUID | str) -> None:
        await self._call(DeleteKnowledgeBase(kb_id=str(kb_id)))

    async def delete_generation(self, kb_id: uuid.UUID | str, generation: int) -> None:
        await self._call(DeleteGeneration(kb_id=str(kb_id), generation=generation))

    async def search(
        self, kb_id: uuid.UUID | str, vector: Sequence[float], limit: int, *, index: IndexTag | None = None
    ) -> list[SearchHit]:
        hits: list[SearchHit] = await self._call(
            Search(kb_id=str(kb_id), vector=[float(x) for x in vector], limit=limit, index=index)
        )
        return hits

    async def count(self, document_id: uuid.UUID | str | None = None) -> int:
        total: int = await self._call(Count(document_id=str(document_id) if document_id else None))
        return total

    async def health(self) -> None:
        await self._call(Health())

    async def close(self) -> None:
        await self._client.aclose()


def _spans(sizes: list[int], budget: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` runs of at most UPSERT_BATCH items whose encoded sizes fit ``budget`` bytes."""
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if size > budget:
            raise ProcessingError(ErrorCode.INTERNAL_ERROR, f"one chunk's point is {size} bytes, over the body limit")
        if i > start and (i - start == UPSERT_BATCH or used + size > budget):
            yield start, i
            start, used = i, 0
        used += size
    if start < len(sizes):
        yield start, len(sizes)


def vector_store_for(settings: Settings, *, role: Literal["api", "processor", "other"]) -> VectorStore:
    """The API owns a local store; everyone else reaches it through the API. A server is shared."""
    if settings.is_local_qdrant and role != "api":
        return RemoteVectorStore(settings.internal_api_url(), internal_secret(settings))
    return QdrantVectorStore.from_settings(settings)
