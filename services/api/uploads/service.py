"""Uploads and replacements: validate, store the object, then ONE transaction for the rows + outbox event."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final, Literal, assert_never

import sqlalchemy.exc
import structlog
from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.schemas import Document
from services.api.uploads import idempotency
from services.api.uploads.commit import AfterStoreHook, ObjectCommit, Plan, StoredFile, UploadResult
from services.api.uploads.filenames import original_for_display, sanitize_filename
from services.api.uploads.media import UnsupportedMediaType, detect_media_type
from services.api.uploads.receive import ReceivedFile
from shared.apikeys import KeyRecord
from shared.db import Database
from shared.errors import ApiError
from shared.lifecycle import create_document, replace_content
from shared.media_types import SUPPORTED
from shared.settings import Settings
from shared.storage import ObjectStore, object_key
from shared.vocabulary import PRIORITIES

__all__ = ["AfterStoreHook", "OnConflict", "UploadResult", "UploadService"]

log = structlog.get_logger("kbingest.api.uploads")

# What an upload whose filename is taken does: refuse (409 duplicate_document) or replace that document's content.
OnConflict = Literal["reject", "replace"]

# Whether a document's versions reference an object: after an ambiguous COMMIT, tells a replacement
# that committed from one that turned out a no-op.
VERSION_REFERENCES: Final = text(
    "SELECT EXISTS (SELECT 1 FROM document_versions WHERE document_id = :id AND object_key = :key)"
)


def _duplicate_error(existing: Any, *, same_name: bool) -> ApiError:
    code = "duplicate_document" if same_name else "duplicate_content"
    what = "a document with this filename" if same_name else "a document with identical content"
    return ApiError(
        409,
        code,
        f"{what} already exists in this knowledge base",
        {"document_id": str(existing["id"]), "status": existing["status"], "filename": existing["filename"]},
    )


def _deleting(document_id: uuid.UUID) -> ApiError:
    return ApiError(
        409,
        "document_deleting",
        "the document is being deleted; its content cannot change",
        {"document_id": str(document_id)},
    )


def _answer(status_code: int, row: RowMapping, **extra: Any) -> UploadResult:
    body = Document.from_row(row).model_dump(mode="json")
    return UploadResult(status_code, body, {"Location": f"/v1/documents/{body['id']}"}, **extra)


class UploadService:
    def __init__(
        self, *, settings: Settings, db: Database, store: ObjectStore, after_store: AfterStoreHook | None = None
    ) -> None:
        self._settings = settings
        self._db = db
        self._objects = ObjectCommit(
            db=db, store=store, retention_s=settings.idempotency_key_retention_s, after_store=after_store
        )

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

    async def _media_type(self, received: ReceivedFile) -> str:
        # Sniffing reads a ZIP's directory from disk: off the event loop, so one hostile archive
        # cannot stall every other request.
        return await asyncio.to_thread(self.validate, received)

    async def upload(
        self,
        *,
        kb_id: uuid.UUID,
        key: KeyRecord,
        received: ReceivedFile,
        priority: str,
        batch_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        on_conflict: OnConflict = "reject",
    ) -> UploadResult:
        """A new document (201); with ``on_conflict="replace"``, a taken filename replaces that document's content."""
        if priority not in PRIORITIES:
            raise ApiError(422, "validation_error", f"priority must be one of {', '.join(PRIORITIES)}")
        media_type = await self._media_type(received)
        filename = sanitize_filename(received.filename)
        keyed = self._objects.keyed(key.id, idempotency_key, f"{kb_id}:{filename}:{received.sha256}")
        try:
            return await self._create(
                kb_id=kb_id,
                received=received,
                media_type=media_type,
                filename=filename,
                priority=priority,
                batch_id=batch_id,
                keyed=keyed,
            )
        except ApiError as exc:
            if on_conflict != "replace" or exc.code != "duplicate_document":
                raise
            existing = uuid.UUID(exc.extra["document_id"])
        return await self._replace(existing, kb_id=kb_id, received=received, media_type=media_type, keyed=keyed)

    async def replace(
        self, *, document_id: uuid.UUID, key: KeyRecord, received: ReceivedFile, idempotency_key: str | None = None
    ) -> UploadResult:
        """New content for a document: 202 (processed beside the active version), 200 when identical."""
        async with self._db.transaction() as conn:
            current = await queries.get_document(conn, document_id)
        if current is None or not key.allows(current["knowledge_base_id"]):
            raise queries.document_not_found()
        media_type = await self._media_type(received)
        keyed = self._objects.keyed(key.id, idempotency_key, f"replace:{document_id}:{received.sha256}")
        kb_id = current["knowledge_base_id"]
        return await self._replace(document_id, kb_id=kb_id, received=received, media_type=media_type, keyed=keyed)

    async def _create(
        self,
        *,
        kb_id: uuid.UUID,
        received: ReceivedFile,
        media_type: str,
        filename: str,
        priority: str,
        batch_id: uuid.UUID | None,
        keyed: idempotency.KeyedRequest | None,
    ) -> UploadResult:
        async with self._db.transaction() as conn:
            # The key is held through the duplicate check: a request with this key committing in
            # between would otherwise be answered as a 409 duplicate instead of being replayed.
            if (answered := await self._objects.answered(conn, keyed)) is not None:
                return answered
            await queries.live_kb(conn, kb_id)
            existing = await queries.find_duplicate(conn, kb_id, filename=filename, sha256=received.sha256)
            if existing is not None:
                raise _duplicate_error(existing, same_name=bool(existing["same_name"]))
        document_id = uuid.uuid4()
        file = StoredFile(received.path, media_type, object_key(kb_id, document_id))
        values = {
            "id": document_id,
            "knowledge_base_id": kb_id,
            "batch_id": batch_id,
            "filename": filename,
            "original_filename": original_for_display(received.filename),
            "media_type": media_type,
            "size_bytes": received.size,
            "sha256": received.sha256,
            "object_key": file.object_key,
            "priority": priority,
            "max_attempts": self._settings.max_attempts,
        }

        async def write(conn: AsyncConnection) -> UploadResult:
            row = await create_document(conn, values=values)
            return _answer(201, await queries.get_written_document(conn, row["id"]))

        async def on_conflict(exc: sqlalchemy.exc.IntegrityError) -> ApiError:
            """A concurrent twin won: answer what it created."""
            async with self._db.transaction() as conn:
                existing = await queries.find_duplicate(conn, kb_id, filename=filename, sha256=received.sha256)
            if existing is None:
                raise exc
            return _duplicate_error(existing, same_name=bool(existing["same_name"]))

        async def reread(conn: AsyncConnection) -> UploadResult:
            return _answer(201, await queries.get_written_document(conn, document_id))

        result = await self._objects.run(Plan(file, document_id, kb_id, keyed, write, on_conflict, reread))
        bound = log.bind(document_id=str(document_id), knowledge_base_id=str(kb_id))
        if not result.replayed:
            bound.info("upload.accepted", size_bytes=received.size, media_type=media_type)
        return result

    async def _replace(
        self,
        document_id: uuid.UUID,
        *,
        kb_id: uuid.UUID,
        received: ReceivedFile,
        media_type: str,
        keyed: idempotency.KeyedRequest | None,
    ) -> UploadResult:
        async with self._db.transaction() as conn:
            if (answered := await self._objects.answered(conn, keyed)) is not None:
                return answered
            await self._check_replaceable(conn, document_id, kb_id, received.sha256)
        # A new key per version: the active version's file stays readable until the new one is active.
        file = StoredFile(received.path, media_type, object_key(kb_id, uuid.uuid4()))
        values = {
            "original_filename": original_for_display(received.filename),
            "media_type": media_type,
            "size_bytes": received.size,
            "sha256": received.sha256,
            "object_key": file.object_key,
            "max_attempts": self._settings.max_attempts,
        }

        async def write(conn: AsyncConnection) -> UploadResult:
            outcome = await replace_content(conn, document_id, values=values, source="kbingest/api")
            match outcome.kind:
                case "gone":
                    raise queries.document_not_found()
                case "deleting":
                    raise _deleting(document_id)
                case "duplicate":
                    raise _duplicate_error(outcome.document, same_name=False)
                case "noop":
                    return _answer(200, await queries.get_written_document(conn, document_id), keeps_object=False)
                case "replaced":
                    row = await queries.get_written_document(conn, document_id)
                    return _answer(202, row, obsolete_keys=tuple(outcome.obsolete_keys))
                case _:
                    assert_never(outcome.kind)

        async def on_conflict(exc: sqlalchemy.exc.IntegrityError) -> ApiError:
            """Another document took this content meanwhile (the live-content unique index)."""
            async with self._db.transaction() as conn:
                await self._check_replaceable(conn, document_id, kb_id, received.sha256)
            raise exc

        async def reread(conn: AsyncConnection) -> UploadResult:
            row = await queries.get_written_document(conn, document_id)
            if (await conn.execute(VERSION_REFERENCES, {"id": document_id, "key": file.object_key})).scalar_one():
                return _answer(202, row)
            return _answer(200, row, keeps_object=False)

        result = await self._objects.run(Plan(file, document_id, kb_id, keyed, write, on_conflict, reread))
        bound = log.bind(document_id=str(document_id), knowledge_base_id=str(kb_id))
        if not result.replayed:
            event = "upload.replaced" if result.status_code == 202 else "upload.unchanged"
            bound.info(event, size_bytes=received.size, media_type=media_type, sha256=received.sha256)
        return result

    async def _check_replaceable(
        self, conn: AsyncConnection, document_id: uuid.UUID, kb_id: uuid.UUID, sha256: str
    ) -> None:
        """404 for a document gone, 409 while it is deleted or when another document has this content."""
        current = await queries.get_document(conn, document_id)
        if current is None:
            raise queries.document_not_found()
        if current["status"] == "deleting":
            raise _deleting(document_id)
        other = await queries.find_duplicate(conn, kb_id, filename=None, sha256=sha256, exclude=document_id)
        if other is not None:
            raise _duplicate_error(other, same_name=False)
