"""Signed internal endpoints through which other processes use the API's local vector store.

Mounted only when the API owns a local store (``QDRANT_URL`` a path); signed with ``INTERNAL_SECRET``
(shared/internal_auth.py), checked from the headers before the body is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import StateDep
from shared.errors import ApiError, ProcessingError
from shared.internal_auth import BodyDigest, verify_request
from shared.subscriber import SignatureError
from shared.vector_remote import INTERNAL_PREFIX, index_from_json

router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)


@dataclass(frozen=True)
class _Chunk:
    chunk_no: int
    text: str
    page: int | None
    heading: str | None


async def _payload(request: Request, secret: str) -> dict[str, Any]:
    """The JSON body, read only once the headers' signature holds (the body limit caps its size)."""
    try:
        digest = BodyDigest(verify_request(secret, request.method, request.url.path, request.headers))
        body = bytearray()
        async for chunk in request.stream():
            digest.update(chunk)
            body += chunk
        digest.check()
    except SignatureError as exc:
        raise ApiError(401, "invalid_signature", str(exc)) from exc
    try:
        data: dict[str, Any] = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(422, "validation_error", f"the body is not JSON: {exc}") from exc
    return data


@router.post("/{op}")
async def vector_op(op: str, request: Request, state: StateDep) -> JSONResponse:
    """One VectorStore call: the caller proved it holds the internal secret."""
    if state.internal_secret is None:
        raise ApiError(404, "not_found", "this API owns no local vector store")
    data = await _payload(request, state.internal_secret)
    store = state.vectors
    try:
        result: Any = None
        if op == "ensure_collection":
            await store.ensure_collection(int(data["dim"]), model=data.get("model"))
        elif op == "upsert_chunks":
            chunks = [_Chunk(**c) for c in data["chunks"]]
            result = await store.upsert_chunks(
                data["document_id"],
                data["kb_id"],
                int(data["version"]),
                data["filename"],
                chunks,
                data["vectors"],
                trim_tail=bool(data.get("trim_tail", True)),
                index=index_from_json(data.get("index")),
            )
        elif op == "delete" and data.get("mode") == "knowledge_base":
            await store.delete_knowledge_base(data["kb_id"])
        elif op == "delete":
            mode, document_id, version = data["mode"], data["document_id"], int(data["version"])
            if mode == "all":
                await store.delete_document(document_id)
            elif mode == "older":
                await store.delete_older_versions(document_id, version)
            else:
                await store.delete_other_versions(document_id, version)
        elif op == "search":
            hits = await store.search(
                data["kb_id"], data["vector"], int(data["limit"]), index=index_from_json(data.get("index"))
            )
            result = [asdict(hit) for hit in hits]
        elif op == "count":
            result = await store.count(data.get("document_id"))
        elif op == "health":
            await store.health()
        else:
            raise ApiError(404, "not_found", f"unknown vector operation {op!r}")
    except ProcessingError as exc:
        raise ApiError(503, exc.code.value, exc.message) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(422, "validation_error", f"bad {op} request: {exc}") from exc
    return JSONResponse({"result": result})
