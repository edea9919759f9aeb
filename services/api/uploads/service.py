"""The upload path: validate, store the object, then ONE transaction for row + outbox event."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.exc
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.schemas import Document
from services.api.uploads.filenames import original_for_display, sanitize_filename
from services.api.uploads.media import UnsupportedMediaType, detect_media_type
from services.api.uploads.receive import ReceivedFile
from shared.apikeys import KeyRecord
from shared.db import Database
from shared.errors import ApiError
from shared.lifecycle import create_document
from shared.media_types import SUPPORTED
from shared.settings import Settings
from shared.storage import ObjectStore, StorageUnavailable, object_key

log = structlog.get_logger("kbingest.api.uploads")

PRIORITIES: Final = ("high", "normal", "low")

FIND_IDEMPOTENT: Final = text(
    "SELECT request_hash, status_code, response FROM idempotency_keys WHERE api_key_id = :key_id AND key = :key"
)
SAVE_IDEMPOTENT: Final = text(
    """
    INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response)
    VALUES (:key_id, :key, :request_hash, :status_code, CAST(:response AS jsonb))
    """
)

# A hook called after the object is stored and before the commit: tests inject failures here.
AfterStoreHook = Callable[[uuid.UUID], Awaitable[None]]


@dataclass(frozen=True)
class UploadResult:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]


def _duplicate_error(existing: Any, *, same_name: bool) -> ApiError:
    code = "duplicate_document" if same_name else "duplicate_content"
    what = "a document with this filename" if same_name else "a document with identical content"
    return ApiError(
        409,
        code,
        f"{what} already exists in this knowledge base",
        {"document_id": str(existing["id"]), "status": existing["status"], "filename": existing["filename"]},
    )


class UploadService:
    def __init__(
        self, *, settings: Settings, db: Database, store: ObjectStore, after_store: AfterStoreHook | None = None
    ) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._after_store = after_store

    def validate(self, received: ReceivedFile) -> str:
        """Return the media type, or raise the 4xx that refuses this file (nothing is stored)."""
        if received.too_large:
            raise ApiError(
                413,
                "file_too_large",
                f"file exceeds the limit of {self._settings.max_upload_bytes} bytes",
                {"max_bytes": self._settings.max_upload_bytes},
            )
        if received.size == 0:
            raise ApiError(422, "empty_file", "the file is empty")
        try:
            media_type = detect_media_type(received.path, received.head, received.filename)
        except UnsupportedMediaType as exc:
            raise ApiError(415, "unsupported_media_type", f"{exc}", {"supported": sorted(SUPPORTED)}) from exc
        return media_type

    async def upload(
        self,
        *,
        kb_id: uuid.UUID,
        key: KeyRecord,
        received: ReceivedFile,
        priority: str,
        batch_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
    ) -> UploadResult:
        if priority not in PRIORITIES:
            raise ApiError(422, "validation_error", f"priority must be one of {', '.join(PRIORITIES)}")
        # Sniffing reads a ZIP's directory from disk: off the event loop, so one hostile archive
        # cannot stall every other request.
        media_type = await asyncio.to_thread(self.validate, received)
        filename = sanitize_filename(received.filename)
        request_hash = hashlib.sha256(f"{kb_id}:{filename}:{received.sha256}".encode()).hexdigest()
        async with self._db.transaction() as conn:
            if idempotency_key is not None:
                replay = await self._replay(conn, key, idempotency_key, request_hash)
                if replay is not None:
                    return replay
            if await queries.get_kb(conn, kb_id) is None:
                raise ApiError(404, "not_found", "knowledge base not found")
            existing = await queries.find_duplicate(conn, kb_id, filename=filename, sha256=received.sha256)
            if existing is not None:
                raise _duplicate_error(existing, same_name=bool(existing["same_name"]))
        document_id = uuid.uuid4()
        key_name = object_key(kb_id, document_id)
        bound = log.bind(document_id=str(document_id), knowledge_base_id=str(kb_id))
        try:
            await self._store.put_file(key_name, received.path, content_type=media_type)
        except StorageUnavailable as exc:
            bound.warning("upload.storage_unavailable", error=str(exc))
            raise ApiError(503, "storage_unavailable", "the object store is unavailable; nothing was stored") from exc
        try:
            result = await self._commit(
                document_id=document_id,
                kb_id=kb_id,
                key=key,
                received=received,
                filename=filename,
                media_type=media_type,
                priority=priority,
                batch_id=batch_id,
                object_key=key_name,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
            )
        except BaseException:
            await self._discard(key_name, bound)
            raise
        bound.info("upload.accepted", size_bytes=received.size, media_type=media_type)
        return result

    async def _commit(
        self,
        *,
        document_id: uuid.UUID,
        kb_id: uuid.UUID,
        key: KeyRecord,
        received: ReceivedFile,
        filename: str,
        media_type: str,
        priority: str,
        batch_id: uuid.UUID | None,
        object_key: str,
        idempotency_key: str | None,
        request_hash: str,
    ) -> UploadResult:
        values = {
            "id": document_id,
            "knowledge_base_id": kb_id,
            "batch_id": batch_id,
            "filename": filename,
            "original_filename": original_for_display(received.filename),
            "media_type": media_type,
            "size_bytes": received.size,
            "sha256": received.sha256,
            "object_key": object_key,
            "priority": priority,
            "max_attempts": self._settings.max_attempts,
        }
        try:
            async with self._db.transaction() as conn:
                if self._after_store is not None:
                    await self._after_store(document_id)
                if await queries.get_kb(conn, kb_id) is None:
                    raise ApiError(404, "not_found", "knowledge base not found")
                row = await create_document(conn, values=values)
                body = Document.from_row(row).model_dump(mode="json")
                headers = {"Location": f"/v1/documents/{document_id}"}
                if idempotency_key is not None:
                    await conn.execute(
                        SAVE_IDEMPOTENT,
                        {
                            "key_id": key.id,
                            "key": idempotency_key,
                            "request_hash": request_hash,
                            "status_code": 201,
                            "response": json.dumps(body),
                        },
                    )
                return UploadResult(201, body, headers)
        except sqlalchemy.exc.IntegrityError as exc:
            return await self._resolve_conflict(
                exc, kb_id, key, filename, received.sha256, idempotency_key, request_hash
            )

    async def _resolve_conflict(
        self,
        exc: sqlalchemy.exc.IntegrityError,
        kb_id: uuid.UUID,
        key: KeyRecord,
        filename: str,
        sha256: str,
        idempotency_key: str | None,
        request_hash: str,
    ) -> UploadResult:
        """A unique index said no: a concurrent twin won. Answer what the winner created."""
        async with self._db.transaction() as conn:
            if idempotency_key is not None and "idempotency_keys" in str(exc.orig):
                replay = await self._replay(conn, key, idempotency_key, request_hash)
                if replay is not None:
                    return replay
            existing = await queries.find_duplicate(conn, kb_id, filename=filename, sha256=sha256)
        if existing is None:
            raise exc
        raise _duplicate_error(existing, same_name=bool(existing["same_name"])) from None

    async def _replay(
        self, conn: AsyncConnection, key: KeyRecord, idempotency_key: str, request_hash: str
    ) -> UploadResult | None:
        row = (await conn.execute(FIND_IDEMPOTENT, {"key_id": key.id, "key": idempotency_key})).mappings().one_or_none()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used for a different upload")
        body = row["response"]
        return UploadResult(
            row["status_code"], body, {"Location": f"/v1/documents/{body['id']}", "Idempotent-Replayed": "true"}
        )

    async def _discard(self, key_name: str, bound: Any) -> None:
        """Delete the object of an upload that did not commit (the orphan sweep is the safety net)."""
        try:
            await self._store.delete(key_name)
        except StorageUnavailable as exc:
            bound.error("upload.orphan_left", object_key=key_name, error=str(exc))
