"""Store a file's object, then commit the transaction that references it: nothing half-written either way.

Upload and replace share this path. The object is written first (a row must never point at a
missing object); then one transaction locks the live KB, replays or records the
``Idempotency-Key`` and writes the rows. If that transaction does not commit, the object is deleted
again; if its COMMIT was sent and the answer lost, Postgres is asked how it ended before the object
is touched (the reconciler's orphan sweep is the safety net for what cannot be decided here).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy.exc
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.uploads import idempotency, kb_lock
from shared.db import Database, DatabaseUnavailable
from shared.errors import ApiError
from shared.storage import ObjectStore, StorageUnavailable

log = structlog.get_logger("kbingest.api.uploads")

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
    # False when the committed rows do not reference this request's object (identical content): it is deleted.
    keeps_object: bool = True
    # Objects the commit made obsolete (a superseded or purged version): deleted once it committed.
    obsolete_keys: tuple[str, ...] = ()


def replay(status_code: int, body: dict[str, Any]) -> UploadResult:
    headers = {"Location": f"/v1/documents/{body['id']}", "Idempotent-Replayed": "true"}
    return UploadResult(status_code, body, headers, replayed=True, keeps_object=False)


# The rows of one request, written in the commit transaction (the KB is locked, the key not yet answered).
Write = Callable[[AsyncConnection], Awaitable[UploadResult]]
# What a unique index refusing the write means to the client (a concurrent twin won): an ApiError to raise.
OnConflict = Callable[[sqlalchemy.exc.IntegrityError], Awaitable[ApiError]]
# The answer once an ambiguous COMMIT turned out committed, read back on a new connection.
Reread = Callable[[AsyncConnection], Awaitable[UploadResult]]


@dataclass(frozen=True)
class StoredFile:
    """The request's file and where it goes."""

    path: Path
    media_type: str
    object_key: str


@dataclass(frozen=True)
class Plan:
    """One request's commit: its file, the document it is about, its key and what to write."""

    file: StoredFile
    subject_id: uuid.UUID
    kb_id: uuid.UUID
    keyed: idempotency.KeyedRequest | None
    write: Write
    on_conflict: OnConflict
    reread: Reread


@dataclass
class _Commit:
    """The transaction's id once its COMMIT is sent: from then on, only Postgres knows how it ended."""

    sent_xid: int | None = None


@dataclass(frozen=True, kw_only=True)
class ObjectCommit:
    db: Database
    store: ObjectStore
    # How long an Idempotency-Key's answer is kept (and replayed).
    retention_s: float
    after_store: AfterStoreHook | None = None

    def keyed(self, key_id: uuid.UUID, idempotency_key: str | None, request: str) -> idempotency.KeyedRequest | None:
        """The ``Idempotency-Key`` of a request that ``request`` (its KB or document, name, sha256) identifies."""
        return idempotency.keyed(key_id, idempotency_key, request, retention_s=self.retention_s)

    async def answered(self, conn: AsyncConnection, keyed: idempotency.KeyedRequest | None) -> UploadResult | None:
        """The earlier answer to this key, holding the key until ``conn``'s transaction ends."""
        if keyed is None:
            return None
        answered = await idempotency.answered(conn, keyed)
        return None if answered is None else replay(*answered)

    async def run(self, plan: Plan) -> UploadResult:
        """Store the object, commit ``plan.write``; delete the object unless the committed rows reference it."""
        file = plan.file
        bound = log.bind(document_id=str(plan.subject_id), knowledge_base_id=str(plan.kb_id))
        try:
            await self.store.put_file(file.object_key, file.path, content_type=file.media_type)
        except StorageUnavailable as exc:
            bound.warning("upload.storage_unavailable", error=str(exc))
            raise ApiError(503, "storage_unavailable", "the object store is unavailable; nothing was stored") from exc
        commit = _Commit()
        try:
            result = await self._commit(commit, plan)
        except sqlalchemy.exc.IntegrityError as exc:
            await self.discard(file.object_key, bound)
            raise await plan.on_conflict(exc) from None
        except Exception as exc:
            if commit.sent_xid is None:
                await self.discard(file.object_key, bound)
                raise
            result = await self._settle(commit.sent_xid, exc, key_name=file.object_key, reread=plan.reread, bound=bound)
        except BaseException:
            # Cancelled: before COMMIT nothing can have committed; after it, nothing more can be
            # asked here, so the object stays for the orphan sweep to judge against the row.
            if commit.sent_xid is not None:
                bound.warning("upload.commit_cancelled", object_key=file.object_key)
            else:
                await self.discard(file.object_key, bound)
            raise
        if not result.keeps_object:
            await self.discard(file.object_key, bound)
        for obsolete in result.obsolete_keys:
            await self.discard(obsolete, bound)
        return result

    async def _commit(self, commit: _Commit, plan: Plan) -> UploadResult:
        async with self.db.transaction() as conn:
            if self.after_store is not None:
                await self.after_store(plan.subject_id)
            # A concurrent request with this key may have committed since the first look.
            if (answered := await self.answered(conn, plan.keyed)) is not None:
                return answered
            xid = await kb_lock.lock_for_upload(conn, plan.kb_id)
            if xid is None:
                raise queries.kb_not_found()
            result = await plan.write(conn)
            if plan.keyed is not None:
                await idempotency.save_answer(conn, plan.keyed, status_code=result.status_code, body=result.body)
            commit.sent_xid = xid
            return result

    async def _settle(self, xid: int, exc: Exception, *, key_name: str, reread: Reread, bound: Any) -> UploadResult:
        """COMMIT was sent and its answer lost: ask Postgres how transaction ``xid`` ended before touching the object.

        Deleting the object of a row that did commit would lose an accepted upload (object_missing
        later); keeping the object of one that did not only leaves an orphan for the sweep.
        """
        try:
            outcome = await self._outcome(xid)
            if outcome == "committed":
                async with self.db.transaction() as conn:
                    result = await reread(conn)
                bound.warning("upload.commit_confirmed", object_key=key_name, error=str(exc))
                # What the commit made obsolete is not known any more: the orphan sweep removes it.
                return result
        except DatabaseUnavailable as reread_error:
            bound.error("upload.commit_unknown", object_key=key_name, error=str(exc), reread_error=str(reread_error))
            raise exc from reread_error
        if outcome == "aborted":
            bound.warning("upload.commit_aborted", object_key=key_name, error=str(exc))
            await self.discard(key_name, bound)
            raise exc
        bound.error("upload.commit_unknown", object_key=key_name, error=str(exc), transaction=outcome)
        raise exc

    async def _outcome(self, xid: int) -> str | None:
        """The transaction's status read on a new connection, waiting briefly while it is still in progress."""
        deadline = time.monotonic() + COMMIT_SETTLE_S
        while True:
            async with self.db.transaction() as conn:
                status: str | None = (await conn.execute(XACT_STATUS, {"xid": str(xid)})).scalar_one()
            if status != "in progress" or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(COMMIT_POLL_S)

    async def discard(self, key_name: str, bound: Any) -> None:
        """Delete an object no committed row references (the orphan sweep is the safety net)."""
        try:
            await self.store.delete(key_name)
        except StorageUnavailable as exc:
            bound.error("upload.orphan_left", object_key=key_name, error=str(exc))
