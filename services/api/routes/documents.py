"""Documents: upload, replace, list, read, versions, retry, delete, content."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.deps import CurrentKey, DbDep, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.schemas import (
    Accepted,
    Document,
    DocumentList,
    DocumentVersion,
    DocumentVersionList,
    ErrorResponse,
)
from services.api.state import AppState
from services.api.uploads.receive import ReceivedFile, ReceivedForm, receive_multipart
from services.api.uploads.service import OnConflict, UploadResult
from shared import queue_position
from shared.errors import ApiError
from shared.lifecycle import request_delete, retry_failed
from shared.storage import ObjectMissing
from shared.vocabulary import PRIORITIES, Status

router = APIRouter(tags=["documents"])
ERRORS = error_responses()
# Versions whose file is kept (a purged or superseded one's is deleted, or about to be).
READABLE_VERSIONS: Final = frozenset({"active", "retained", "pending", "failed"})


def _multipart(**fields: dict[str, object]) -> dict[str, object]:
    """The OpenAPI request body of a route reading a multipart ``file`` (and the form ``fields``)."""
    properties = {"file": {"type": "string", "format": "binary"}, **fields}
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": schema}}}}


@router.post(
    "/v1/knowledge-bases/{kb_id}/documents",
    status_code=201,
    response_model=Document,
    responses={
        200: {"model": Document, "description": "on_conflict=replace, identical content: nothing changed"},
        202: {"model": Document, "description": "on_conflict=replace: the new content is being processed"},
        **error_responses(409, 413, 415, 422, 503),
    },
    openapi_extra=_multipart(priority={"type": "string", "enum": list(PRIORITIES)}),
)
async def upload_document(
    kb_id: uuid.UUID,
    request: Request,
    key: CurrentKey,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    on_conflict: Annotated[OnConflict, Query(description="a taken filename: 409 (reject) or replace its content")] = (
        "reject"
    ),
) -> JSONResponse:
    """Stream one file to the object store, then commit the row and its event together."""
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        await queries.live_kb(conn, kb_id)
    async with _one_file(request, state) as received:
        result = await state.uploads.upload(
            kb_id=kb_id,
            key=key,
            received=received.file,
            priority=received.form.fields.get("priority", "normal") or "normal",
            idempotency_key=idempotency_key,
            on_conflict=on_conflict,
        )
    return await _document_answer(state, result)


@router.put(
    "/v1/documents/{document_id}/content",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Document,
    responses={
        200: {"model": Document, "description": "identical content: nothing changed"},
        **error_responses(409, 413, 415, 422, 503),
    },
    openapi_extra=_multipart(),
)
async def replace_document_content(
    document_id: uuid.UUID,
    request: Request,
    key: CurrentKey,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """New content, processed beside the current version; search serves the current one until it is ready."""
    await _load_visible(state.db, key, document_id)
    async with _one_file(request, state) as received:
        result = await state.uploads.replace(
            document_id=document_id, key=key, received=received.file, idempotency_key=idempotency_key
        )
    return await _document_answer(state, result)


@dataclass(frozen=True)
class _OneFile:
    form: ReceivedForm
    file: ReceivedFile


@asynccontextmanager
async def _one_file(request: Request, state: AppState) -> AsyncIterator[_OneFile]:
    """The request's multipart ``file`` part, streamed to a temp file removed afterwards."""
    form = await receive_multipart(request, max_file_bytes=state.settings.max_upload_bytes, max_files=1, fail_fast=True)
    try:
        files = [f for f in form.files if f.field_name == "file"]
        if not files:
            raise ApiError(422, "validation_error", "multipart field 'file' is required")
        yield _OneFile(form, files[0])
    finally:
        form.cleanup()


async def _document_answer(state: AppState, result: UploadResult) -> JSONResponse:
    """The upload's answer (a replayed one too) with the queue position of now."""
    async with state.db.transaction() as conn:
        document = (await with_queue_positions(conn, [Document.model_validate(result.body)]))[0]
    return JSONResponse(document.model_dump(mode="json"), status_code=result.status_code, headers=result.headers)


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
    status_: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> DocumentList:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    require_kb_access(key, kb_id)
    after = _decode_cursor(cursor) if cursor else None
    async with db.transaction() as conn:
        await queries.live_kb(conn, kb_id)
        rows = await queries.list_documents(conn, kb_id, status=status_, limit=limit + 1, after=after)
        items = await with_queue_positions(conn, [Document.from_row(r) for r in rows[:limit]])
    next_cursor = _encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return DocumentList(items=items, next_cursor=next_cursor)


async def _visible_row(conn: AsyncConnection, key: CurrentKey, document_id: uuid.UUID) -> RowMapping:
    """The live user document the key may see (404 for anything else, a build row's id included)."""
    row = await queries.get_document(conn, document_id)
    if row is None or not key.allows(row["knowledge_base_id"]):
        raise queries.document_not_found()
    return row


async def _visible(conn: AsyncConnection, key: CurrentKey, document_id: uuid.UUID) -> Document:
    return Document.from_row(await _visible_row(conn, key, document_id))


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
        return (await with_queue_positions(conn, [await _visible(conn, key, document_id)]))[0]


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
            raise queries.document_not_found()
    return Accepted(id=document_id, status="deleting")


@router.get("/v1/documents/{document_id}/versions", response_model=DocumentVersionList, responses=ERRORS)
async def list_versions(document_id: uuid.UUID, key: CurrentKey, db: DbDep) -> DocumentVersionList:
    """Every content version of the document, newest first."""
    async with db.transaction() as conn:
        await _visible(conn, key, document_id)
        rows = await queries.list_versions(conn, document_id)
    return DocumentVersionList(items=[DocumentVersion.from_row(r) for r in rows])


@router.get(
    "/v1/documents/{document_id}/content",
    responses={**ERRORS, 410: {"model": ErrorResponse, "description": "the version's file was purged"}},
)
async def document_content(
    document_id: uuid.UUID,
    key: CurrentKey,
    state: StateDep,
    version: Annotated[int | None, Query(ge=1, description="a retained version (default: the active one)")] = None,
) -> StreamingResponse:
    async with state.db.transaction() as conn:
        row = await _visible_row(conn, key, document_id)
        object_key, media_type = await _content_of(conn, row, version)
    filename = str(row["filename"])
    try:
        stat = await state.store.stat(object_key)
    except ObjectMissing as exc:
        if version is not None:
            raise _version_purged(version) from exc
        raise ApiError(404, "object_missing", "the stored file is missing") from exc
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
    return StreamingResponse(
        state.store.stream(object_key),
        media_type=media_type,
        headers={"Content-Length": str(stat.size), "Content-Disposition": disposition},
    )


async def _content_of(conn: AsyncConnection, document: RowMapping, version: int | None) -> tuple[str, str]:
    """The object key and media type of the active content, or of ``version`` while its file is kept."""
    if version is None:
        return str(document["object_key"]), str(document["media_type"])
    found = await queries.get_version(conn, document["id"], version)
    if found is None:
        raise ApiError(404, "version_not_found", f"the document has no version {version}", {"version": version})
    if found["status"] not in READABLE_VERSIONS:
        raise _version_purged(version)
    return str(found["object_key"]), str(found["media_type"])


def _version_purged(version: int) -> ApiError:
    return ApiError(
        410, "version_purged", f"version {version} is no longer retained (VERSION_RETENTION)", {"version": version}
    )
