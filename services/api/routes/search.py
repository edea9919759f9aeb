"""Semantic search over the ready chunks of one knowledge base."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text

from services.api import queries
from services.api.deps import CurrentKey, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from shared.errors import ApiError, ErrorCode, ProcessingError

router = APIRouter(tags=["search"])

# Hits only count while their document is ready and at the version that was indexed.
READY_VERSIONS = text(
    "SELECT id, version, filename FROM documents WHERE id = ANY(:ids) AND status = 'ready' AND deleted_at IS NULL"
)
OVERFETCH = 3


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    limit: int = Field(default=10, ge=1, le=100)


class SearchItem(BaseModel):
    document_id: uuid.UUID
    filename: str
    chunk_no: int
    text: str
    score: float
    page: int | None = None
    heading: str | None = None


class SearchResponse(BaseModel):
    items: list[SearchItem]


@router.post("/v1/knowledge-bases/{kb_id}/search", response_model=SearchResponse, responses=error_responses(503))
async def search(kb_id: uuid.UUID, body: SearchRequest, key: CurrentKey, state: StateDep) -> SearchResponse:
    """Embed the query with the indexing model and return the best chunks of ready documents."""
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        if await queries.get_kb(conn, kb_id) is None:
            raise ApiError(404, "not_found", "knowledge base not found")
    try:
        vector = await state.embedder.embed_query(body.query)
        hits = await state.vectors.search(kb_id, vector, body.limit * OVERFETCH)
    except ProcessingError as exc:
        code = "embedder_unavailable" if exc.code != ErrorCode.INDEX_UNAVAILABLE else "index_unavailable"
        raise ApiError(503, code, exc.message, headers={"Retry-After": "5"}) from exc
    if not hits:
        return SearchResponse(items=[])
    async with state.db.transaction() as conn:
        rows = (
            (await conn.execute(READY_VERSIONS, {"ids": list({uuid.UUID(h.document_id) for h in hits})}))
            .mappings()
            .all()
        )
    ready = {str(r["id"]): r for r in rows}
    items = [
        SearchItem(
            document_id=uuid.UUID(h.document_id),
            filename=ready[h.document_id]["filename"],
            chunk_no=h.chunk_no,
            text=h.text,
            score=h.score,
            page=h.page,
            heading=h.heading,
        )
        for h in hits
        if h.document_id in ready and ready[h.document_id]["version"] == h.version
    ]
    return SearchResponse(items=items[: body.limit])
