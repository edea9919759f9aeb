"""Every document state transition: one fenced SQL statement plus its outbox event.

Handlers call these; nothing else writes ``documents.status``/``stage``. Each function runs in
the caller's transaction, so the state change and its event commit together or not at all.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, assert_never

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import queue
from shared.errors import DocumentError, ErrorCode
from shared.events import STATE_CHANNEL, WORK_EVENT_TYPES
from shared.outbox import add_event, release_held

Status = Literal["queued", "processing", "ready", "failed", "deleting"]
Stage = Literal["downloading", "extracting", "chunking", "embedding", "indexing"]

_COLS: Final = (
    "id, knowledge_base_id, batch_id, filename, original_filename, media_type, size_bytes, sha256, "
    "object_key, status, stage, priority, attempts, max_attempts, error, chunk_count, version, "
    "lease_owner, lease_epoch, available_at, created_at, updated_at, heartbeat_at, processed_at, "
    "deleted_at"
)

# Inserts a new queued document; partial unique indexes reject a live duplicate name/content.
INSERT_DOCUMENT: Final = text(
    f"""
    INSERT INTO documents (id, knowledge_base_id, batch_id, filename, original_filename, media_type,
        size_bytes, sha256, object_key, status, priority, max_attempts)
    VALUES (:id, :knowledge_base_id, :batch_id, :filename, :original_filename, :media_type,
        :size_bytes, :sha256, :object_key, 'queued', :priority, :max_attempts)
    RETURNING {_COLS}
    """
)

# Taking the lease bumps epoch (fences zombies) and attempts (so crashes count).
_TAKE_LEASE: Final = """
    status = 'processing', stage = NULL, attempts = attempts + 1,
    lease_epoch = lease_epoch + 1, version = version + 1, lease_owner = :owner,
    heartbeat_at = now(), updated_at = now(), error = NULL
"""

# Takes the lease of one given document, only if it is queued and due.
CLAIM: Final = text(
    f"""
    UPDATE documents SET {_TAKE_LEASE}
    WHERE id = :id AND status = 'queued' AND deleted_at IS NULL AND available_at <= now()
    RETURNING {_COLS}
    """
)

# Takes the lease of the next document in dispatch order (shared.queue) and marks its knowledge
# base as just served (the round-robin key). Also returns the id of the event that queued it, so
# the work logs under it.
CLAIM_NEXT: Final = text(
    f"""
    WITH next AS ({queue.NEXT_DUE}),
    served AS (
        UPDATE knowledge_bases SET last_dispatched_at = clock_timestamp()
        WHERE id = (SELECT knowledge_base_id FROM next)
    )
    UPDATE documents AS d SET {_TAKE_LEASE}
    WHERE d.id = (SELECT id FROM next) AND d.status = 'queued'
    RETURNING {", ".join("d." + c.strip() for c in _COLS.split(","))},
        (SELECT o.id FROM outbox AS o
         WHERE o.aggregate_id = d.id AND o.type IN ({", ".join(repr(t) for t in sorted(WORK_EVENT_TYPES))})
         ORDER BY o.seq DESC LIMIT 1) AS event_id
    """
)

# Renews the lease; 0 rows means the lease is lost and the holder must stop.
HEARTBEAT: Final = text(
    """
    UPDATE documents SET heartbeat_at = now()
    WHERE id = :id AND lease_epoch = :epoch AND status = 'processing'
    """
)

# Moves to the next stage, only while holding the lease.
ADVANCE_STAGE: Final = text(
    f"""
    UPDATE documents SET stage = :stage, heartbeat_at = now(), updated_at = now()
    WHERE id = :id AND lease_epoch = :epoch AND status = 'processing'
    RETURNING {_COLS}
    """
)

# Finishes successfully, only while holding the lease.
MARK_READY: Final = text(
    f"""
    UPDATE documents SET status = 'ready', stage = NULL, chunk_count = :chunk_count,
        processed_at = now(), updated_at = now(), lease_owner = NULL, error = NULL
    WHERE id = :id AND lease_epoch = :epoch AND status = 'processing'
    RETURNING {_COLS}
    """
)

# Sends back to the queue with a delay (retry) or at once (hand-back), only while holding the lease.
REQUEUE_HELD: Final = text(
    f"""
    UPDATE documents SET status = 'queued', stage = NULL, lease_owner = NULL,
        lease_epoch = lease_epoch + 1, error = CAST(:error AS jsonb),
        available_at = now() + make_interval(secs => :delay_s), updated_at = now()
    WHERE id = :id AND lease_epoch = :epoch AND status = 'processing'
    RETURNING {_COLS}
    """
)

# Fails for good, only while holding the lease.
MARK_FAILED: Final = text(
    f"""
    UPDATE documents SET status = 'failed', stage = NULL, lease_owner = NULL,
        error = CAST(:error AS jsonb), processed_at = now(), updated_at = now()
    WHERE id = :id AND lease_epoch = :epoch AND status = 'processing'
    RETURNING {_COLS}
    """
)

# Takes a lease from its holder: back to queued, or failed when out of attempts; the epoch bump fences the holder.
_RESCUE: Final = """
    UPDATE documents SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
        stage = NULL, lease_owner = NULL, lease_epoch = lease_epoch + 1,
        error = CAST(:error AS jsonb), updated_at = now(),
        processed_at = CASE WHEN attempts >= max_attempts THEN now() ELSE processed_at END
    WHERE id = :id AND status = 'processing' AND lease_epoch = :epoch
"""

# Rescues a processing document whose heartbeat is older than the threshold (any holder).
RESCUE_STALE: Final = text(
    f"""{_RESCUE} AND heartbeat_at < now() - make_interval(secs => :stale_after_s)
    RETURNING {_COLS}
    """
)

# Rescues a processing document whose holder's presence lock is gone (its process died), heartbeat or not.
RESCUE_ORPHANED: Final = text(
    f"""{_RESCUE} AND lease_owner = :owner
    RETURNING {_COLS}
    """
)

# Fails a queued/processing document whose object is gone (reconciler); bumps the epoch to fence any holder.
FAIL_OBJECT_MISSING: Final = text(
    f"""
    UPDATE documents SET status = 'failed', stage = NULL, lease_owner = NULL, lease_epoch = lease_epoch + 1,
        error = CAST(:error AS jsonb), processed_at = now(), updated_at = now()
    WHERE id = :id AND lease_epoch = :epoch AND status IN ('queued', 'processing') AND deleted_at IS NULL
    RETURNING {_COLS}
    """
)

# Failed → queued with a fresh attempt budget (user retry).
RETRY_FAILED: Final = text(
    f"""
    UPDATE documents SET status = 'queued', attempts = 0, error = NULL, stage = NULL,
        available_at = now(), updated_at = now()
    WHERE id = :id AND status = 'failed' AND deleted_at IS NULL
    RETURNING {_COLS}
    """
)

# Marks for deletion (tombstone); the lease is bumped so a running worker stops writing.
REQUEST_DELETE: Final = text(
    f"""
    UPDATE documents SET status = 'deleting', stage = NULL, lease_epoch = lease_epoch + 1,
        lease_owner = NULL, updated_at = now()
    WHERE id = :id AND deleted_at IS NULL
    RETURNING {_COLS}
    """
)

# A deletion ends the attempt in progress (its holder is fenced out by the epoch bump).
CLOSE_DELETED_ATTEMPT: Final = text(
    """
    UPDATE document_attempts SET finished_at = now(), outcome = 'deleted'
    WHERE document_id = :id AND finished_at IS NULL
    """
)

# Completes a deletion: the row stays as a tombstone with deleted_at set.
FINISH_DELETE: Final = text(
    f"""
    UPDATE documents SET deleted_at = now(), updated_at = now()
    WHERE id = :id AND status = 'deleting' AND deleted_at IS NULL
    RETURNING {_COLS}
    """
)

# Fails a queued document without running it (batch cancel).
CANCEL_QUEUED: Final = text(
    f"""
    UPDATE documents SET status = 'failed', error = CAST(:error AS jsonb), processed_at = now(),
        updated_at = now(), lease_epoch = lease_epoch + 1
    WHERE id = :id AND status = 'queued' AND deleted_at IS NULL
    RETURNING {_COLS}
    """
)

# Opens an attempt row at claim time.
OPEN_ATTEMPT: Final = text(
    """
    INSERT INTO document_attempts (document_id, attempt, lease_epoch, lease_owner)
    VALUES (:document_id, :attempt, :epoch, :owner)
    """
)

# Closes the attempt of a given lease with its outcome and error.
CLOSE_ATTEMPT: Final = text(
    """
    UPDATE document_attempts SET finished_at = now(), outcome = :outcome, stage = :stage,
        error = CAST(:error AS jsonb)
    WHERE document_id = :document_id AND lease_epoch = :epoch AND finished_at IS NULL
    """
)

_STATE_NOTIFY: Final = text(f"SELECT pg_notify('{STATE_CHANNEL}', :payload)")


@dataclass(frozen=True)
class Lease:
    """What a processor holds while it works on a document."""

    document_id: uuid.UUID
    epoch: int
    owner: str
    version: int
    attempt: int
    row: RowMapping
    # The event that queued this attempt (dispatch by pull is not tied to a delivery).
    event_id: str | None = None


def event_data(row: RowMapping) -> dict[str, Any]:
    """The ``data`` of a document event: ids, version, status and what changed."""
    return {
        "document_id": str(row["id"]),
        "knowledge_base_id": str(row["knowledge_base_id"]),
        "version": row["version"],
        "status": "deleted" if row["deleted_at"] is not None else row["status"],
        "stage": row["stage"],
        "filename": row["filename"],
        "media_type": row["media_type"],
        "size_bytes": row["size_bytes"],
        "sha256": row["sha256"],
        "attempts": row["attempts"],
        "chunk_count": row["chunk_count"],
        "error": row["error"],
    }


async def _emit(
    conn: AsyncConnection, row: RowMapping, event_type: str, source: str, *, delay_s: float = 0.0
) -> dict[str, Any]:
    body = await add_event(
        conn, event_type=event_type, aggregate_id=row["id"], data=event_data(row), source=source, delay_s=delay_s
    )
    notice = {
        "event_id": body["id"],
        "type": event_type,
        "document_id": str(row["id"]),
        "knowledge_base_id": str(row["knowledge_base_id"]),
        "status": body["data"]["status"],
        "stage": row["stage"],
        "version": row["version"],
        "updated_at": _iso(row["updated_at"]),
    }
    await conn.execute(_STATE_NOTIFY, {"payload": json.dumps(notice)})
    return body


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _error_json(error: DocumentError | None) -> str | None:
    return json.dumps(error.to_json()) if error is not None else None


async def create_document(conn: AsyncConnection, *, values: dict[str, Any], source: str = "kbingest/api") -> RowMapping:
    """Insert a queued document and its ``document.uploaded`` event (IntegrityError on duplicate)."""
    row = (await conn.execute(INSERT_DOCUMENT, values)).mappings().one()
    await _emit(conn, row, "document.uploaded", source)
    return row


async def claim(conn: AsyncConnection, document_id: uuid.UUID, *, owner: str) -> Lease | None:
    """Take the lease of a queued document; None when it is taken, terminal or not yet due."""
    row = (await conn.execute(CLAIM, {"id": document_id, "owner": owner})).mappings().one_or_none()
    if row is None:
        return None
    return await _open_attempt(conn, row, owner)


async def _open_attempt(conn: AsyncConnection, row: RowMapping, owner: str) -> Lease:
    await conn.execute(
        OPEN_ATTEMPT,
        {"document_id": row["id"], "attempt": row["attempts"], "epoch": row["lease_epoch"], "owner": owner},
    )
    event_id = row.get("event_id")
    return Lease(
        document_id=row["id"],
        epoch=row["lease_epoch"],
        owner=owner,
        version=row["version"],
        attempt=row["attempts"],
        row=row,
        event_id=str(event_id) if event_id is not None else None,
    )


async def claim_next(conn: AsyncConnection, *, owner: str) -> Lease | None:
    """Take the lease of the next due document in dispatch order; None when nothing is due."""
    row = (await conn.execute(CLAIM_NEXT, {"owner": owner})).mappings().one_or_none()
    if row is None:
        return None
    return await _open_attempt(conn, row, owner)


async def heartbeat(conn: AsyncConnection, lease: Lease) -> bool:
    """Renew the lease; False means it was lost."""
    result = await conn.execute(HEARTBEAT, {"id": lease.document_id, "epoch": lease.epoch})
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult has rowcount


async def advance_stage(
    conn: AsyncConnection, lease: Lease, stage: Stage, *, source: str = "kbingest/processor"
) -> bool:
    """Enter ``stage`` and emit ``document.stage_changed``; False means the lease was lost."""
    row = (
        (await conn.execute(ADVANCE_STAGE, {"id": lease.document_id, "epoch": lease.epoch, "stage": stage}))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return False
    await _emit(conn, row, "document.stage_changed", source)
    return True


async def mark_ready(
    conn: AsyncConnection, lease: Lease, *, chunk_count: int, source: str = "kbingest/processor"
) -> bool:
    """Finish as ``ready`` with ``document.indexed``; False means the lease was lost."""
    row = (
        (await conn.execute(MARK_READY, {"id": lease.document_id, "epoch": lease.epoch, "chunk_count": chunk_count}))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return False
    await _close_attempt(conn, lease.document_id, lease.epoch, "ready", None, None)
    await _emit(conn, row, "document.indexed", source)
    return True


Outcome = Literal["retry_scheduled", "failed", "lease_lost"]


async def fail_or_retry(
    conn: AsyncConnection,
    lease: Lease,
    error: DocumentError,
    *,
    stage: str | None,
    retry_delay_s: float,
    source: str = "kbingest/processor",
) -> Outcome:
    """Retry a retryable error while attempts remain, else fail for good (wrapping the cause)."""
    row = lease.row
    out_of_attempts = lease.attempt >= row["max_attempts"]
    final = error
    if error.retryable and out_of_attempts:
        final = DocumentError(
            ErrorCode.MAX_ATTEMPTS_EXCEEDED,
            f"gave up after {lease.attempt} attempts: {error.message}",
            cause=error,
        )
    if error.retryable and not out_of_attempts:
        updated = (
            (
                await conn.execute(
                    REQUEUE_HELD,
                    {
                        "id": lease.document_id,
                        "epoch": lease.epoch,
                        "error": _error_json(error),
                        "delay_s": retry_delay_s,
                    },
                )
            )
            .mappings()
            .one_or_none()
        )
        outcome: Outcome = "retry_scheduled"
    else:
        updated = (
            (
                await conn.execute(
                    MARK_FAILED, {"id": lease.document_id, "epoch": lease.epoch, "error": _error_json(final)}
                )
            )
            .mappings()
            .one_or_none()
        )
        outcome = "failed"
    if updated is None:
        return "lease_lost"
    await _close_attempt(conn, lease.document_id, lease.epoch, outcome, stage, error)
    await _emit(
        conn, updated, f"document.{outcome}", source, delay_s=retry_delay_s if outcome == "retry_scheduled" else 0.0
    )
    return outcome


async def hand_back(
    conn: AsyncConnection, lease: Lease, *, stage: str | None, source: str = "kbingest/processor"
) -> bool:
    """Give the document back at once (shutdown): queued, not counted as a failure."""
    updated = (
        (
            await conn.execute(
                REQUEUE_HELD, {"id": lease.document_id, "epoch": lease.epoch, "error": None, "delay_s": 0.0}
            )
        )
        .mappings()
        .one_or_none()
    )
    if updated is None:
        return False
    await conn.execute(
        text("UPDATE documents SET attempts = GREATEST(attempts - 1, 0) WHERE id = :id"),
        {"id": lease.document_id},
    )
    await _close_attempt(conn, lease.document_id, lease.epoch, "handed_back", stage, None)
    await _emit(conn, updated, "document.requeued", source)
    return True


RescueReason = Literal["stale", "presence_lost"]


async def rescue(
    conn: AsyncConnection,
    document_id: uuid.UUID,
    *,
    epoch: int,
    reason: RescueReason,
    owner: str | None = None,
    stale_after_s: float = 0.0,
    source: str = "kbingest/reconciler",
) -> Literal["requeued", "failed", "skipped"]:
    """Requeue (or fail, when out of attempts) a processing document whose holder is gone.

    ``stale``: its heartbeat is older than ``stale_after_s``. ``presence_lost``: ``owner``'s presence
    lock is gone (shared.presence). Either way the attempt is closed as ``stalled``.
    """
    params: dict[str, object]
    match reason:
        case "stale":
            stalled = DocumentError(ErrorCode.STALLED, f"no heartbeat for more than {stale_after_s:g}s")
            statement, params = RESCUE_STALE, {"stale_after_s": stale_after_s}
        case "presence_lost":
            stalled = DocumentError(ErrorCode.STALLED, f"processor {owner} is gone (its database session ended)")
            statement, params = RESCUE_ORPHANED, {"owner": owner}
        case _:
            assert_never(reason)
    current = (
        (await conn.execute(text("SELECT attempts, max_attempts FROM documents WHERE id = :id"), {"id": document_id}))
        .mappings()
        .one_or_none()
    )
    if current is None:
        return "skipped"
    final = stalled
    if current["attempts"] >= current["max_attempts"]:
        final = DocumentError(
            ErrorCode.MAX_ATTEMPTS_EXCEEDED,
            f"gave up after {current['attempts']} attempts: {stalled.message}",
            cause=stalled,
        )
    row = (
        (await conn.execute(statement, {"id": document_id, "epoch": epoch, "error": _error_json(final), **params}))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return "skipped"
    await _close_attempt(conn, document_id, epoch, "stalled", None, stalled)
    if row["status"] == "failed":
        await _emit(conn, row, "document.failed", source)
        return "failed"
    await _emit(conn, row, "document.requeued", source)
    return "requeued"


async def requeue_event(
    conn: AsyncConnection, row: RowMapping, *, source: str = "kbingest/reconciler"
) -> dict[str, Any]:
    """Re-emit ``document.requeued`` for a queued document whose dispatch was lost."""
    return await _emit(conn, row, "document.requeued", source)


async def fail_object_missing(
    conn: AsyncConnection,
    document_id: uuid.UUID,
    *,
    epoch: int,
    key: str,
    source: str = "kbingest/reconciler",
) -> bool:
    """Fail a queued/processing document whose stored object vanished (``object_missing``, permanent)."""
    error = DocumentError(ErrorCode.OBJECT_MISSING, f"the stored original {key!r} no longer exists")
    row = (
        (await conn.execute(FAIL_OBJECT_MISSING, {"id": document_id, "epoch": epoch, "error": _error_json(error)}))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return False
    await _close_attempt(conn, document_id, epoch, "failed", None, error)
    await _emit(conn, row, "document.failed", source)
    return True


async def retry_failed(
    conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/api"
) -> RowMapping | None:
    """User retry: failed → queued with attempts reset; None when not failed."""
    row = (await conn.execute(RETRY_FAILED, {"id": document_id})).mappings().one_or_none()
    if row is not None:
        await _emit(conn, row, "document.requeued", source)
    return row


async def cancel_queued(
    conn: AsyncConnection, document_id: uuid.UUID, error: DocumentError, *, source: str = "kbingest/api"
) -> bool:
    """Fail a still-queued document with ``error`` (it never ran)."""
    row = (await conn.execute(CANCEL_QUEUED, {"id": document_id, "error": _error_json(error)})).mappings().one_or_none()
    if row is not None:
        await _emit(conn, row, "document.failed", source)
    return row is not None


async def request_delete(
    conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/api"
) -> RowMapping | None:
    """Mark ``deleting`` and emit ``document.delete_requested``; None when already gone."""
    row = (await conn.execute(REQUEST_DELETE, {"id": document_id})).mappings().one_or_none()
    if row is not None:
        # A pending retry's delayed event would hold the deletion back until it is due.
        await release_held(conn, document_id)
        await conn.execute(CLOSE_DELETED_ATTEMPT, {"id": document_id})
        await _emit(conn, row, "document.delete_requested", source)
    return row


async def finish_delete(conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/processor") -> bool:
    """Tombstone a ``deleting`` document once its points and object are gone."""
    row = (await conn.execute(FINISH_DELETE, {"id": document_id})).mappings().one_or_none()
    if row is None:
        return False
    await _emit(conn, row, "document.deleted", source)
    return True


async def _close_attempt(
    conn: AsyncConnection,
    document_id: uuid.UUID,
    epoch: int,
    outcome: str,
    stage: str | None,
    error: DocumentError | None,
) -> None:
    await conn.execute(
        CLOSE_ATTEMPT,
        {"document_id": document_id, "epoch": epoch, "outcome": outcome, "stage": stage, "error": _error_json(error)},
    )
