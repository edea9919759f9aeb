"""Signed internal endpoints through which other processes use the API's local vector store.

Mounted only when the API owns a local store (``QDRANT_URL`` a path); signed with ``INTERNAL_SECRET``
(shared/internal_auth.py), checked from the headers before the body is read. One route per
``VectorStore`` method, its body the call's model in shared/vector_calls.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.api.deps import StateDep
from services.api.state import AppState
from shared import vector_calls as calls
from shared.errors import ApiError, ProcessingError
from shared.internal_auth import BodyDigest, verify_request
from shared.signing import SignatureError
from shared.vectorstore import EmbeddedChunks, VectorStore

router = APIRouter(prefix=calls.INTERNAL_PREFIX, include_in_schema=False)

C = TypeVar("C", bound=calls.VectorCall)


async def _call(request: Request, state: AppState, model: type[C]) -> C:
    """The call's body, read only once the headers' signature holds (the body limit caps its size)."""
    if state.internal_secret is None:
        raise ApiError(404, "not_found", "this API owns no local vector store")
    try:
        digest = BodyDigest(verify_request(state.internal_secret, request.method, request.url.path, request.headers))
        body = bytearray()
        async for chunk in request.stream():
            digest.update(chunk)
            body += chunk
        digest.check()
    except SignatureError as exc:
        raise ApiError(401, "invalid_signature", str(exc)) from exc
    try:
        return model.model_validate_json(bytes(body) or b"{}")
    except ValidationError as exc:
        raise ApiError(422, "validation_error", f"bad {model.path} request: {exc}") from exc


@asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """The store's own failure (Qdrant down) is the caller's 503 with its code, to retry."""
    try:
        yield
    except ProcessingError as exc:
        raise ApiError(503, exc.code.value, exc.message) from exc


def _route(model: type[C], run: Callable[[VectorStore, C], Awaitable[Any]]) -> None:
    """``POST /{model.path}``: parse the signed call, run it on the store, answer ``{"result": ...}``."""

    async def endpoint(request: Request, state: StateDep) -> JSONResponse:
        call = await _call(request, state, model)
        async with _store_errors():
            result = await run(state.vectors, call)
        return JSONResponse({"result": result})

    router.add_api_route(f"/{model.path}", endpoint, methods=["POST"], name=f"internal_vectors.{model.path}")


async def _search(store: VectorStore, call: calls.Search) -> list[dict[str, Any]]:
    hits = await store.search(call.kb_id, call.vector, call.limit, index=call.index)
    return [asdict(hit) for hit in hits]


_route(calls.EnsureCollection, lambda store, c: store.ensure_collection(c.dim, model=c.model))
_route(
    calls.UpsertChunks,
    lambda store, c: store.upsert_chunks(
        EmbeddedChunks(c.document_id, c.kb_id, c.version, c.filename, c.chunks, c.vectors, c.index),
        trim_tail=c.trim_tail,
    ),
)
_route(calls.DeleteOtherVersions, lambda store, c: store.delete_other_versions(c.document_id, c.keep_version))
_route(calls.DeleteOlderVersions, lambda store, c: store.delete_older_versions(c.document_id, c.version))
_route(calls.DeleteDocument, lambda store, c: store.delete_document(c.document_id))
_route(calls.DeleteKnowledgeBase, lambda store, c: store.delete_knowledge_base(c.kb_id))
_route(calls.DeleteGeneration, lambda store, c: store.delete_generation(c.kb_id, c.generation))
_route(calls.Search, _search)
_route(calls.Count, lambda store, c: store.count(c.document_id))
_route(calls.Health, lambda store, _: store.health())
