"""Documents: upload, list, read, retry, delete, content."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.deps import CurrentKey, DbDep, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.schemas import Accepted, Document, DocumentList
from services.api.uploads.receive import receive_multipart
from shared import queue_position
from shared.errors import ApiError
from shared.lifecycle import _COLS as DOCUMENT_COLUMNS
from shared.lifecycle import request_delete, retry_failed
from shared.storage import ObjectMissing

router = APIRouter(tags=["documents"])
ERRORS = error_responses()
StatusFilter = Literal["queued", "processing", "ready", "failed", "deleting"]


@router.post(
    "/v1/knowledge-bases/{kb_id}/documents",
    status_code=201,
    response_model=Document,
    responses=error_responses(409, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "priority": {"type": "string", "enum": ["high", "normal", "low"]},
                        },
                    }
                }
            }
        }
    },
)
async def upload_document(
    kb_id: uuid.UUID,
    request: Request,
    key: CurrentKey,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Stream one file to the object store, then commit the row and its event together."""
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        if await queries.get_kb(conn, kb_id) is None:
            raise ApiError(404, "not_found", "knowledge base not found")
    form = await receive_multipart(request, max_file_bytes=state.settings.max_upload_bytes, max_files=1, fail_fast=True)
    try:
        files = [f for f in form.files if f.field_name == "file"]
        if not files:
            raise ApiError(422, "validation_error", "multipart field 'file' is required")
        result = await state.uploads.upload(
            kb_id=kb_id,
            key=key,
            received=files[0],
            priority=form.fields.get("priority", "normal") or "normal",
            idempotency_key=idempotency_key,
        )
    finally:
        form.cleanup()
    body = result.body
    if result.status_code == 201:
        async with state.db.transaction() as conn:
            body = (await with_queue_positions(conn, [Document.model_validate(body)]))[0].model_dump(mode="json")
    return JSONResponse(body, status_code=result.status_code, headers=result.headers)


async def with_queue_positions(conn: AsyncConnection, documents: list[Document]) -> list[Document]:
    """The documents with ``queue_position``/``eta_s`` filled in for those queued (one query for all)."""
    estimates = await queue_position.estimate(conn, [d.id for d in documents if d.status == "queued"])
    return [
        d.model_copy(update={"queue_position": e.position, "eta_s": e.eta_s}) if (e := estimates.get(d.id)) else d
        for d in documents
    ]


def _encode_cursor(created_at: datetime, doc_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{doc_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, doc_id = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(doc_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned") from exc


@router.get("/v1/knowledge-bases/{kb_id}/documents", response_model=DocumentList, responses=ERRORS)
async def list_documents(
    kb_id: uuid.UUID,
    key: CurrentKey,
    db: DbDep,
    status_: Annotated[StatusFilter | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> DocumentList:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    require_kb_access(key, kb_id)
    params: dict[str, object] = {"kb_id": kb_id, "limit": limit + 1, "status": status_}
    where = "knowledge_base_id = :kb_id AND deleted_at IS NULL AND (CAST(:status AS text) IS NULL OR status = :status)"
    if cursor:
        params["c_created"], params["c_id"] = _decode_cursor(cursor)
        where += " AND (created_at, id) < (:c_created, :c_id)"
    async with db.transaction() as conn:
        if await queries.get_kb(conn, kb_id) is None:
            raise ApiError(404, "not_found", "knowledge base not found")
        rows = (
            (
                await conn.execute(
                    text(
                        f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE {where} "
                        "ORDER BY created_at DESC, id DESC LIMIT :limit"
                    ),
                    params,
                )
            )
            .mappings()
            .all()
        )
        items = await with_queue_positions(conn, [Document.from_row(r) for r in rows[:limit]])
    next_cursor = _encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return DocumentList(items=items, next_cursor=next_cursor)


async def _visible(conn: AsyncConnection, key: CurrentKey, document_id: uuid.UUID) -> Document:
    row = await queries.get_document(conn, document_id)
    if row is None or not key.allows(row["knowledge_base_id"]):
        raise ApiError(404, "not_found", "document not found")
    return Document.from_row(row)


async def _load_visible(db: DbDep, key: CurrentKey, document_id: uuid.UUID) -> Document:
    async with db.transaction() as conn:
        return await _visible(conn, key, document_id)


@router.get("/v1/documents/{document_id}", response_model=Document, responses=ERRORS)
async def get_document(document_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Document:
    async with db.transaction() as conn:
        return (await with_queue_positions(conn, [await _visible(conn, key, document_id)]))[0]


@router.post(
    "/v1/documents/{document_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Document,
    responses=error_responses(409),
)
async def retry_document(document_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Document:
    """Failed → queued with a fresh attempt budget."""
    current = await _load_visible(db, key, document_id)
    async with db.transaction() as conn:
        row = await retry_failed(conn, document_id)
    if row is None:
        raise ApiError(
            409,
            "not_retryable",
            f"only failed documents can be retried (status is {current.status})",
            {"status": current.status},
        )
    async with db.transaction() as conn:
        return (await with_queue_positions(conn, [Document.from_row(row)]))[0]


@router.delete(
    "/v1/documents/{document_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=ERRORS
)
async def delete_document(document_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Accepted:
    """Mark deleting; the processor removes points and object, then tombstones the row."""
    current = await _load_visible(db, key, document_id)
    if current.status != "deleting":
        async with db.transaction() as conn:
            row = await request_delete(conn, document_id)
        if row is None:
            raise ApiError(404, "not_found", "document not found")
    return Accepted(id=document_id, status="deleting")


@router.get("/v1/documents/{document_id}/content", responses=ERRORS)
async def document_content(document_id: uuid.UUID, key: CurrentKey, state: StateDep) -> StreamingResponse:
    document = await _load_visible(state.db, key, document_id)
    async with state.db.transaction() as conn:
        object_key = (
            await conn.execute(text("SELECT object_key FROM documents WHERE id = :id"), {"id": document_id})
        ).scalar_one()
    try:
        stat = await state.store.stat(object_key)
    except ObjectMissing as exc:
        raise ApiError(404, "object_missing", "the stored file is missing") from exc
    ascii_name = document.filename.encode("ascii", "replace").decode().replace('"', "'")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(document.filename)}"
    return StreamingResponse(
        state.store.stream(object_key),
        media_type=document.media_type,
        headers={"Content-Length": str(stat.size), "Content-Disposition": disposition},
    )
