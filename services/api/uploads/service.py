"""The upload path: validate, store the object, then ONE transaction for row + outbox event."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.exc
import structlog
from sqlalchemy import text

from services.api import queries
from services.api.schemas import Document
from services.api.uploads import idempotency, kb_lock
from services.api.uploads.filenames import original_for_display, sanitize_filename
from services.api.uploads.media import UnsupportedMediaType, detect_media_type
from services.api.uploads.receive import ReceivedFile
from shared.apikeys import KeyRecord
from shared.db import Database, DatabaseUnavailable
from shared.errors import ApiError
from shared.lifecycle import _COLS as DOCUMENT_COLUMNS
from shared.lifecycle import create_document
from shared.media_types import SUPPORTED
from shared.settings import Settings
from shared.storage import ObjectStore, StorageUnavailable, object_key

log = structlog.get_logger("kbingest.api.uploads")

PRIORITIES: Final = ("high", "normal", "low")

# Every column of one document, tombstoned or not: the row an ambiguous COMMIT may have written.
GET_WRITTEN: Final = text(f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = :id")

# How a transaction ended: 'committed', 'aborted' or 'in progress' (NULL once too old to know).
XACT_STATUS: Final = text("SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8))")

# A COMMIT that reached the server ends within milliseconds; a transaction still open after this
# never got its COMMIT (it aborts when its backend notices the lost client, at the latest after
# idle_in_transaction_session_timeout), or its server hangs: either way the orphan sweep, whose
# grace is far longer, decides about the object later.
COMMIT_SETTLE_S: Final = 5.0
COMMIT_POLL_S: Final = 0.05

# A hook called after the object is stored and before the commit: tests inject failures here.
AfterStoreHook = Callable[[uuid.UUID], Awaitable[None]]


@dataclass(frozen=True)
class UploadResult:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]
    # The answer of an earlier request with the same Idempotency-Key: this request's object is not needed.
    replayed: bool = False


@dataclass
class _Commit:
    """The upload transaction's id once its COMMIT is sent: from then on, only Postgres knows how it ended."""

    sent_xid: int | None = None


def _duplicate_error(existing: Any, *, same_name: bool) -> ApiError:
    code = "duplicate_document" if same_name else "duplicate_content"
    what = "a document with this filename" if same_name else "a document with identical content"
    return ApiError(
        409,
        code,
        f"{what} already exists in this knowledge base",
        {"document_id": str(existing["id"]), "status": existing["status"], "filename": existing["filename"]},
    )


def _replay(status_code: int, body: dict[str, Any]) -> UploadResult:
    headers = {"Location": f"/v1/documents/{body['id']}", "Idempotent-Replayed": "true"}
    return UploadResult(status_code, body, headers, replayed=True)


def _created(row: Any) -> UploadResult:
    body = Document.from_row(row).model_dump(mode="json")
    return UploadResult(201, body, {"Location": f"/v1/documents/{body['id']}"})


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
                # Held through the duplicate check: a request with this key committing in between
                # would otherwise be answered as a 409 duplicate instead of being replayed.
                await idempotency.lock(conn, key.id, idempotency_key)
                answered = await idempotency.find(
                    conn, key.id, idempotency_key, request_hash, retention_s=self._retention_s
                )
                if answered is not None:
                    return _replay(*answered)
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
        commit = _Commit()
        try:
            result = await self._commit(
                commit,
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
        except Exception as exc:
            if commit.sent_xid is not None:
                return await self._settle(commit.sent_xid, exc, document_id=document_id, key_name=key_name, bound=bound)
            await self._discard(key_name, bound)
            raise
        except BaseException:
            # Cancelled: before COMMIT nothing can have committed; after it, nothing more can be
            # asked here, so the object stays for the orphan sweep to judge against the row.
            if commit.sent_xid is not None:
                bound.warning("upload.commit_cancelled", object_key=key_name)
            else:
                await self._discard(key_name, bound)
            raise
        if result.replayed:
            await self._discard(key_name, bound)
            return result
        bound.info("upload.accepted", size_bytes=received.size, media_type=media_type)
        return result

    @property
    def _retention_s(self) -> float:
        return self._settings.idempotency_key_retention_s

    async def _commit(
        self,
        commit: _Commit,
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
                if idempotency_key is not None:
                    # A concurrent request with this key may have committed since the first look.
                    await idempotency.lock(conn, key.id, idempotency_key)
                    answered = await idempotency.find(
                        conn, key.id, idempotency_key, request_hash, retention_s=self._retention_s
                    )
                    if answered is not None:
                        return _replay(*answered)
                xid = await kb_lock.lock_for_upload(conn, kb_id)
                if xid is None:
                    raise ApiError(404, "not_found", "knowledge base not found")
                result = _created(await create_document(conn, values=values))
                if idempotency_key is not None:
                    await idempotency.save(
                        conn,
                        key.id,
                        idempotency_key,
                        request_hash,
                        status_code=result.status_code,
                        body=result.body,
                        retention_s=self._retention_s,
                    )
                commit.sent_xid = xid
                return result
        except sqlalchemy.exc.IntegrityError as exc:
            return await self._resolve_conflict(exc, kb_id, filename, received.sha256)

    async def _resolve_conflict(
        self, exc: sqlalchemy.exc.IntegrityError, kb_id: uuid.UUID, filename: str, sha256: str
    ) -> UploadResult:
        """A unique index said no: a concurrent twin won. Answer what the winner created."""
        async with self._db.transaction() as conn:
            existing = await queries.find_duplicate(conn, kb_id, filename=filename, sha256=sha256)
        if existing is None:
            raise exc
        raise _duplicate_error(existing, same_name=bool(existing["same_name"])) from None

    async def _settle(
        self, xid: int, exc: Exception, *, document_id: uuid.UUID, key_name: str, bound: Any
    ) -> UploadResult:
        """COMMIT was sent and its answer lost: ask Postgres how transaction ``xid`` ended before touching the object.

        Deleting the object of a row that did commit would lose an accepted upload (object_missing
        later); keeping the object of one that did not only leaves an orphan for the sweep.
        """
        try:
            outcome = await self._outcome(xid)
            if outcome == "committed":
                async with self._db.transaction() as conn:
                    row = (await conn.execute(GET_WRITTEN, {"id": document_id})).mappings().one()
                bound.warning("upload.commit_confirmed", object_key=key_name, error=str(exc))
                return _created(row)
        except DatabaseUnavailable as reread:
            bound.error("upload.commit_unknown", object_key=key_name, error=str(exc), reread_error=str(reread))
            raise exc from reread
        if outcome == "aborted":
            bound.warning("upload.commit_aborted", object_key=key_name, error=str(exc))
            await self._discard(key_name, bound)
            raise exc
        bound.error("upload.commit_unknown", object_key=key_name, error=str(exc), transaction=outcome)
        raise exc

    async def _outcome(self, xid: int) -> str | None:
        """The transaction's status read on a new connection, waiting briefly while it is still in progress."""
        deadline = time.monotonic() + COMMIT_SETTLE_S
        while True:
            async with self._db.transaction() as conn:
                status: str | None = (await conn.execute(XACT_STATUS, {"xid": str(xid)})).scalar_one()
            if status != "in progress" or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(COMMIT_POLL_S)

    async def _discard(self, key_name: str, bound: Any) -> None:
        """Delete the object of an upload that did not commit (the orphan sweep is the safety net)."""
        try:
            await self._store.delete(key_name)
        except StorageUnavailable as exc:
            bound.error("upload.orphan_left", object_key=key_name, error=str(exc))
