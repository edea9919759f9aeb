"""The internal vector API's calls: one request model per ``VectorStore`` method, and its result type.

The client (shared/vector_remote.py) sends them, the API's routes (services/api/routes/internal_vectors.py)
parse them; ``POST {INTERNAL_PREFIX}/{CALL.path}`` answers ``{"result": <result>}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, TypeAdapter

from shared.vectorstore import IndexTag, SearchHit

INTERNAL_PREFIX: Final = "/internal/v1/vectors"


class VectorCall(BaseModel):
    """A request body; ``path`` is the call's route under INTERNAL_PREFIX."""

    model_config = ConfigDict(extra="forbid")
    path: ClassVar[str]
    result: ClassVar[TypeAdapter[Any]] = TypeAdapter(None)


class EnsureCollection(VectorCall):
    path = "ensure_collection"
    dim: int
    model: str | None = None


class ChunkJson(BaseModel):
    """A chunk as the store needs it (satisfies shared.vectorstore.ChunkLike)."""

    chunk_no: int
    text: str
    page: int | None
    heading: str | None


class UpsertChunks(VectorCall):
    path = "upsert_chunks"
    result = TypeAdapter(int)
    document_id: str
    kb_id: str
    version: int
    filename: str | None
    index: IndexTag | None = None
    trim_tail: bool = True
    chunks: list[ChunkJson]
    vectors: list[list[float]]


class DeleteOtherVersions(VectorCall):
    path = "delete_other_versions"
    document_id: str
    keep_version: int


class DeleteOlderVersions(VectorCall):
    path = "delete_older_versions"
    document_id: str
    version: int


class DeleteDocument(VectorCall):
    path = "delete_document"
    document_id: str


class DeleteKnowledgeBase(VectorCall):
    path = "delete_knowledge_base"
    kb_id: str


class DeleteGeneration(VectorCall):
    path = "delete_generation"
    kb_id: str
    generation: int


class Search(VectorCall):
    path = "search"
    result = TypeAdapter(list[SearchHit])
    kb_id: str
    vector: list[float]
    limit: int
    index: IndexTag | None = None


class Count(VectorCall):
    path = "count"
    result = TypeAdapter(int)
    document_id: str | None = None


class Health(VectorCall):
    path = "health"
