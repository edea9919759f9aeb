"""VectorStore over the API's signed internal endpoints, for local Qdrant mode.

Qdrant's local mode allows one process per path, so there the API owns the store and other
processes write through it. With ``QDRANT_URL`` set, everyone talks to the Qdrant server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final, Literal

import httpx

from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings
from shared.subscriber import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.vectorstore import ChunkLike, QdrantVectorStore, SearchHit, VectorStore

INTERNAL_PREFIX: Final = "/internal/v1/vectors"
TIMEOUT: Final = httpx.Timeout(120.0, connect=5.0)


class RemoteVectorStore:
    """The ``VectorStore`` protocol, each call one signed POST to the API process."""

    def __init__(self, base_url: str, secret: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._secret = secret
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=TIMEOUT,
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )

    async def _call(self, op: str, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            response = await self._client.post(f"{INTERNAL_PREFIX}/{op}", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProcessingError(ErrorCode.INDEX_UNAVAILABLE, f"vector store (via API) unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ProcessingError(
                ErrorCode.INDEX_UNAVAILABLE,
                f"vector store (via API) answered {response.status_code}: {response.text[:300]}",
            )
        return response.json()["result"]

    async def ensure_collection(self, dim: int) -> None:
        await self._call("ensure_collection", {"dim": dim})

    async def upsert_chunks(
        self,
        document_id: uuid.UUID | str,
        kb_id: uuid.UUID | str,
        version: int,
        filename: str | None,
        chunks: Sequence[ChunkLike],
        vectors: Sequence[Sequence[float]],
    ) -> int:
        payload = {
            "document_id": str(document_id),
            "kb_id": str(kb_id),
            "version": version,
            "filename": filename,
            "chunks": [{"chunk_no": c.chunk_no, "text": c.text, "page": c.page, "heading": c.heading} for c in chunks],
            "vectors": [list(v) for v in vectors],
        }
        return int(await self._call("upsert_chunks", payload))

    async def delete_other_versions(self, document_id: uuid.UUID | str, keep_version: int) -> None:
        await self._call("delete", {"document_id": str(document_id), "mode": "other", "version": keep_version})

    async def delete_older_versions(self, document_id: uuid.UUID | str, version: int) -> None:
        await self._call("delete", {"document_id": str(document_id), "mode": "older", "version": version})

    async def delete_document(self, document_id: uuid.UUID | str) -> None:
        await self._call("delete", {"document_id": str(document_id), "mode": "all", "version": 0})

    async def search(self, kb_id: uuid.UUID | str, vector: Sequence[float], limit: int) -> list[SearchHit]:
        hits = await self._call("search", {"kb_id": str(kb_id), "vector": list(vector), "limit": limit})
        return [SearchHit(**hit) for hit in hits]

    async def count(self, document_id: uuid.UUID | str | None = None) -> int:
        return int(await self._call("count", {"document_id": str(document_id) if document_id else None}))

    async def health(self) -> None:
        await self._call("health", {})

    async def close(self) -> None:
        await self._client.aclose()


def vector_store_for(settings: Settings, *, role: Literal["api", "processor", "other"]) -> VectorStore:
    """The API owns a local store; everyone else reaches it through the API. A server is shared."""
    if settings.is_local_qdrant and role != "api":
        return RemoteVectorStore(settings.internal_api_url(), settings.relay_secret.get_secret_value())
    return QdrantVectorStore.from_settings(settings)
