"""Signed internal endpoints through which other processes use the API's local vector store.

Mounted only when the API owns a local store (``QDRANT_URL`` a path); signed with ``INTERNAL_SECRET``
(shared/internal_auth.py), checked from the headers before the body is read. One route per
``VectorStore`` method, its body the call's model in shared/vector_calls.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.api.deps import StateDep
from services.api.state import AppState
from shared.errors import ApiError, ProcessingError
from shared.internal_auth import BodyDigest, verify_request
from shared.subscriber import SignatureError
from shared.vector_calls import (
    INTERNAL_PREFIX,
    Count,
    DeleteDocument,
    DeleteKnowledgeBase,
    DeleteOlderVersions,
    DeleteOtherVersions,
    EnsureCollection,
    Health,
    Search,
    UpsertChunks,
    VectorCall,
)

router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)

C = TypeVar("C", bound=VectorCall)


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


def _result(value: Any = None) -> JSONResponse:
    return JSONResponse({"result": value})


@router.post(f"/{EnsureCollection.path}")
async def ensure_collection(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, EnsureCollection)
    async with _store_errors():
        await state.vectors.ensure_collection(call.dim, model=call.model)
    return _result()


@router.post(f"/{UpsertChunks.path}")
async def upsert_chunks(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, UpsertChunks)
    async with _store_errors():
        written = await state.vectors.upsert_chunks(
            call.document_id,
            call.kb_id,
            call.version,
            call.filename,
            call.chunks,
            call.vectors,
            trim_tail=call.trim_tail,
            index=call.index,
        )
    return _result(written)


@router.post(f"/{DeleteOtherVersions.path}")
async def delete_other_versions(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, DeleteOtherVersions)
    async with _store_errors():
        await state.vectors.delete_other_versions(call.document_id, call.keep_version)
    return _result()


@router.post(f"/{DeleteOlderVersions.path}")
async def delete_older_versions(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, DeleteOlderVersions)
    async with _store_errors():
        await state.vectors.delete_older_versions(call.document_id, call.version)
    return _result()


@router.post(f"/{DeleteDocument.path}")
async def delete_document(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, DeleteDocument)
    async with _store_errors():
        await state.vectors.delete_document(call.document_id)
    return _result()


@router.post(f"/{DeleteKnowledgeBase.path}")
async def delete_knowledge_base(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, DeleteKnowledgeBase)
    async with _store_errors():
        await state.vectors.delete_knowledge_base(call.kb_id)
    return _result()


@router.post(f"/{Search.path}")
async def search(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, Search)
    async with _store_errors():
        hits = await state.vectors.search(call.kb_id, call.vector, call.limit, index=call.index)
    return _result([asdict(hit) for hit in hits])


@router.post(f"/{Count.path}")
async def count(request: Request, state: StateDep) -> JSONResponse:
    call = await _call(request, state, Count)
    async with _store_errors():
        return _result(await state.vectors.count(call.document_id))


@router.post(f"/{Health.path}")
async def health(request: Request, state: StateDep) -> JSONResponse:
    await _call(request, state, Health)
    async with _store_errors():
        await state.vectors.health()
    return _result()
