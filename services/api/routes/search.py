"""Semantic search over the ready chunks of one knowledge base."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text

from services.api.deps import CurrentKey, StateDep, require_kb_access
from services.api.routes.reindex import active_index
from services.api.routes.responses import error_responses
from shared.errors import ApiError, ErrorCode, ProcessingError
from shared.vectorstore import IndexTag

router = APIRouter(tags=["search"])

# A hit counts only while the row that wrote it (the document itself or one of its builds) is ready, at
# the version that wrote it, and is the build serving a live ready document (docs/documents-change.md):
# switching ``served_by`` in one transaction moves search from one build to the next, never both or neither.
SERVING_BUILDS = text(
    """
    SELECT b.id AS build_id, b.version, d.id AS document_id, d.filename
    FROM documents b JOIN documents d ON d.id = COALESCE(b.parent_id, b.id)
    WHERE b.id = ANY(:ids) AND b.status = 'ready'
      AND d.deleted_at IS NULL AND d.status = 'ready' AND COALESCE(d.served_by, d.id) = b.id
    """
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
    """Embed the query with the active generation's model and return the best chunks it serves.

    Only that model's collection is searched, filtered to the active generation, so one answer never
    mixes generations or models (a re-index builds the next one beside it, docs/documents-change.md).
    """
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        index = await active_index(conn, state.settings, kb_id)
    try:
        vector = await state.embedders.get(index.embedding_model).embed_query(body.query)
        tag = IndexTag(index.generation, index.embedding_model)
        hits = await state.vectors.search(kb_id, vector, body.limit * OVERFETCH, index=tag)
    except ProcessingError as exc:
        code = "embedder_unavailable" if exc.code != ErrorCode.INDEX_UNAVAILABLE else "index_unavailable"
        raise ApiError(503, code, exc.message, headers={"Retry-After": "5"}) from exc
    if not hits:
        return SearchResponse(items=[])
    async with state.db.transaction() as conn:
        rows = (
            (await conn.execute(SERVING_BUILDS, {"ids": list({uuid.UUID(h.document_id) for h in hits})}))
            .mappings()
            .all()
        )
    # A hit's ``document_id`` is the row that wrote it; the user sees the document that row serves.
    ready = {str(r["build_id"]): r for r in rows}
    items = [
        SearchItem(
            document_id=ready[h.document_id]["document_id"],
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
