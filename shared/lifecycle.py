"""Every document state transition: one fenced SQL statement plus its outbox event.

Handlers call these; nothing else writes ``documents.status``/``stage``. Each function runs in
the caller's transaction, so the state change and its event commit together or not at all.

A build row (``parent_id`` set: a replacement or a re-index of a document, docs/documents-change.md)
goes through the same transitions; its events speak for its document (``_emit``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, assert_never

from sqlalchemy import TextClause, text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import generations, queue, state_notices, versions
from shared.errors import DocumentError, ErrorCode, ProcessingError
from shared.event_data import DocumentEventData
from shared.events import BUILD_EVENT_TYPES, STATE_CHANNEL, VERSION_EVENT_TYPES, WORK_EVENT_TYPES, EventType
from shared.outbox import add_event, release_held
from shared.state_notices import DocumentNotice
from shared.vocabulary import Stage

_COLS: Final = (
    "id, knowledge_base_id, batch_id, filename, original_filename, media_type, size_bytes, sha256, "
    "object_key, status, stage, priority, attempts, max_attempts, error, chunk_count, version, "
    "lease_owner, lease_epoch, available_at, created_at, updated_at, heartbeat_at, processed_at, "
    "deleted_at, parent_id, purpose, content_version, generation, served_by"
)

# Inserts a new queued document; partial unique indexes reject a live duplicate name/content.
INSERT_DOCUMENT: Final = text(
    f"""
    INSERT INTO documents (id, knowledge_base_id, batch_id, filename, original_filename, media_type,
        size_bytes, sha256, object_key, status, priority, max_attempts,
        generation)
    VALUES (:id, :knowledge_base_id, :batch_id, :filename, :original_filename, :media_type,
        :size_bytes, :sha256, :object_key, 'queued', :priority, :max_attempts,
        (SELECT active_generation FROM knowledge_bases WHERE id = :knowledge_base_id))
    RETURNING {_COLS}
    """
)

# Taking the lease bumps epoch (fences zombies) and attempts (so crashes count). The version comes from
# one sequence: monotonic per row, and a build's points never carry a version its document's could.
_TAKE_LEASE: Final = """
    status = 'processing', stage = NULL, attempts = attempts + 1,
    lease_epoch = lease_epoch + 1, version = nextval('document_version_seq'), lease_owner = :owner,
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

_WORK_TYPES: Final = ", ".join(repr(t) for t in sorted(WORK_EVENT_TYPES))

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
         WHERE o.aggregate_id = COALESCE(d.parent_id, d.id) AND o.type IN ({_WORK_TYPES})
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
    WHERE id = :id AND status = 'failed' AND deleted_at IS NULL AND parent_id IS NULL
    RETURNING {_COLS}
    """
)

# User retry of a ready document whose replacement failed: that build is queued again, fresh budget.
RETRY_FAILED_BUILD: Final = text(
    f"""
    UPDATE documents SET status = 'queued', attempts = 0, error = NULL, stage = NULL,
        available_at = now(), updated_at = now()
    WHERE id = (SELECT b.id FROM documents AS b JOIN documents AS d ON d.id = b.parent_id
                WHERE b.parent_id = :id AND b.purpose = 'replace' AND b.status = 'failed'
                  AND b.deleted_at IS NULL AND d.status = 'ready' AND d.deleted_at IS NULL
                ORDER BY b.content_version DESC LIMIT 1)
      AND status = 'failed'
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

# Ends the open attempts of rows whose work was taken away (fenced by their epoch bump).
CLOSE_OPEN_ATTEMPTS: Final = text(
    """
    UPDATE document_attempts SET finished_at = now(), outcome = :outcome
    WHERE document_id = ANY(:ids) AND finished_at IS NULL
    """
)

# A document's deletion takes its builds with it: in flight ones are fenced out; no event of their own.
DELETE_BUILDS: Final = text(
    """
    UPDATE documents SET status = 'deleting', stage = NULL, lease_epoch = lease_epoch + 1,
        lease_owner = NULL, updated_at = now()
    WHERE parent_id = :id AND deleted_at IS NULL AND status <> 'deleting'
    RETURNING id
    """
)

# A newer replacement supersedes the one not serving yet (queued, processing or failed): fenced, then purged.
SUPERSEDE_BUILDS: Final = text(
    """
    UPDATE documents SET status = 'deleting', stage = NULL, lease_epoch = lease_epoch + 1,
        lease_owner = NULL, updated_at = now()
    WHERE parent_id = :id AND purpose = 'replace' AND deleted_at IS NULL
      AND status IN ('queued', 'processing', 'failed')
    RETURNING id, content_version
    """
)

# The tombstones of a purged document's builds.
FINISH_DELETE_BUILDS: Final = text(
    "UPDATE documents SET deleted_at = now(), updated_at = now() WHERE parent_id = :id AND deleted_at IS NULL"
)

# A user document, locked: replacements, activation and deletion of a document take its lock first
# (then its builds'), so they never deadlock with each other. NO KEY UPDATE: inserting a build row
# (its foreign key takes KEY SHARE on the document, as a re-index start does) is not blocked by it.
LOCK_DOCUMENT: Final = text(f"SELECT {_COLS} FROM documents WHERE id = :id FOR NO KEY UPDATE")

# Whether the KB is building an index generation (a terminal transition may then switch generations).
KB_BUILDING: Final = text("SELECT 1 FROM index_generations WHERE knowledge_base_id = :kb AND state = 'building'")
GET_DOCUMENT: Final = text(f"SELECT {_COLS} FROM documents WHERE id = :id")

# A never-ready document takes the new content itself: requeued with a fresh budget; the epoch bump
# fences an attempt in flight (its writes are rejected and taken back).
REPOINT: Final = text(
    f"""
    UPDATE documents SET object_key = :object_key, sha256 = :sha256, size_bytes = :size_bytes,
        media_type = :media_type, original_filename = :original_filename, content_version = :content_version,
        priority = COALESCE(CAST(:priority AS text), priority),
        max_attempts = COALESCE(CAST(:max_attempts AS integer), max_attempts),
        status = 'queued', stage = NULL, attempts = 0, error = NULL, lease_owner = NULL,
        lease_epoch = lease_epoch + 1, available_at = now(), processed_at = NULL, chunk_count = NULL,
        updated_at = now()
    WHERE id = :id
    RETURNING {_COLS}
    """
)

# A replacement's build row: the document's name, KB and priority, the new content, the active generation.
INSERT_REPLACE_BUILD: Final = text(
    f"""
    INSERT INTO documents (id, knowledge_base_id, batch_id, filename, original_filename, media_type,
        size_bytes, sha256, object_key, status, priority, max_attempts, parent_id, purpose, content_version,
        generation)
    SELECT :build_id, d.knowledge_base_id, NULL, d.filename, :original_filename, :media_type,
        :size_bytes, :sha256, :object_key, 'queued', COALESCE(CAST(:priority AS text), d.priority),
        COALESCE(CAST(:max_attempts AS integer), d.max_attempts), d.id, 'replace', :content_version,
        k.active_generation
    FROM documents AS d JOIN knowledge_bases AS k ON k.id = d.knowledge_base_id
    WHERE d.id = :id
    RETURNING {_COLS}
    """
)

# Another live document of the KB already has this content (the live-content unique index).
SAME_CONTENT: Final = text(
    f"""
    SELECT {_COLS} FROM documents
    WHERE knowledge_base_id = :kb AND sha256 = :sha256 AND id <> :id AND deleted_at IS NULL AND parent_id IS NULL
    """
)

# Activation: the document serves the build's content from this commit on (docs/documents-change.md).
SWITCH_SERVED: Final = text(
    """
    UPDATE documents AS d SET served_by = b.id, content_version = b.content_version, object_key = b.object_key,
        sha256 = b.sha256, size_bytes = b.size_bytes, media_type = b.media_type,
        original_filename = b.original_filename, chunk_count = b.chunk_count, status = 'ready', stage = NULL,
        error = NULL, processed_at = now(), updated_at = now()
    FROM documents AS b
    WHERE b.id = :build_id AND d.id = b.parent_id
    """
)

# The build a document served before an activation: its row stays as a tombstone (status kept).
TOMBSTONE_BUILD: Final = text(
    "UPDATE documents SET deleted_at = now(), updated_at = now() WHERE id = :id AND deleted_at IS NULL"
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


async def _emit(
    conn: AsyncConnection,
    row: RowMapping,
    event_type: EventType,
    source: str,
    *,
    delay_s: float = 0.0,
    previous_build_id: uuid.UUID | None = None,
) -> dict[str, Any] | None:
    """Write the event of ``row``'s transition and notify the SSE listeners; returns the envelope.

    A build row is hidden: its event speaks for its document (subject, aggregate and ``data`` are the
    document's, so per-document ordering and the SSE stream follow the document), mapped by purpose
    (shared.events.BUILD_EVENT_TYPES); a transition with no mapped type emits nothing (None).
    """
    if row["parent_id"] is None:
        data = DocumentEventData.of_document(row)
        if event_type in VERSION_EVENT_TYPES:
            data = data.with_version(row)
        return await _publish(conn, row, event_type, data, source, delay_s=delay_s)
    mapped = BUILD_EVENT_TYPES[row["purpose"]].get(event_type)
    if mapped is None:
        return None
    document = (await conn.execute(GET_DOCUMENT, {"id": row["parent_id"]})).mappings().one()
    data = DocumentEventData.of_document(document).with_version(row)
    if previous_build_id is not None:
        data = data.model_copy(update={"previous_build_id": previous_build_id})
    if mapped == "document.version_failed":
        data = data.model_copy(update={"error": row["error"]})
    return await _publish(conn, document, mapped, data, source, delay_s=delay_s)


async def _publish(
    conn: AsyncConnection,
    document: RowMapping,
    event_type: EventType,
    data: DocumentEventData,
    source: str,
    *,
    delay_s: float,
) -> dict[str, Any]:
    body = await add_event(
        conn, event_type=event_type, aggregate_id=document["id"], data=data.to_json(), source=source, delay_s=delay_s
    )
    notice = DocumentNotice(
        event_id=body["id"],
        type=event_type,
        document_id=str(document["id"]),
        knowledge_base_id=str(document["knowledge_base_id"]),
        status=data.status,
        stage=document["stage"],
        version=document["version"],
        updated_at=_iso(document["updated_at"]),
    )
    await conn.execute(_STATE_NOTIFY, {"payload": state_notices.to_json(notice)})
    return body


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _error_json(error: DocumentError | None) -> str | None:
    return json.dumps(error.to_json()) if error is not None else None


async def _fenced(
    conn: AsyncConnection, statement: TextClause, document_id: uuid.UUID, epoch: int, **params: object
) -> RowMapping | None:
    """Run a transition fenced by the lease epoch: the updated row, or None when that lease is no longer held."""
    bound = {"id": document_id, "epoch": epoch, **params}
    return (await conn.execute(statement, bound)).mappings().one_or_none()


async def create_document(conn: AsyncConnection, *, values: dict[str, Any], source: str = "kbingest/api") -> RowMapping:
    """Insert a queued document and its ``document.uploaded`` event (IntegrityError on duplicate)."""
    row = (await conn.execute(INSERT_DOCUMENT, values)).mappings().one()
    await generations.on_document_created(conn, row, max_attempts=values["max_attempts"])
    await versions.insert(conn, row["id"], row["content_version"], values=row, build_id=row["id"])
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
    return bool(result.rowcount)


async def advance_stage(
    conn: AsyncConnection, lease: Lease, stage: Stage, *, source: str = "kbingest/processor"
) -> bool:
    """Enter ``stage`` and emit ``document.stage_changed``; False means the lease was lost."""
    row = await _fenced(conn, ADVANCE_STAGE, lease.document_id, lease.epoch, stage=stage)
    if row is None:
        return False
    await _emit(conn, row, "document.stage_changed", source)
    return True


@dataclass(frozen=True)
class Ready:
    """A row marked ready, and what its commit made obsolete (removed after commit by the processor).

    ``purge_rows``: rows whose points no longer serve (the build a document served before an
    activation); ``obsolete_keys``: files of versions purged beyond VERSION_RETENTION.
    """

    purge_rows: tuple[uuid.UUID, ...] = ()
    obsolete_keys: tuple[str, ...] = ()


async def mark_ready(
    conn: AsyncConnection,
    lease: Lease,
    *,
    chunk_count: int,
    retention: int = 1,
    source: str = "kbingest/processor",
) -> Ready | None:
    """Finish as ``ready`` with ``document.indexed``; None means the lease was lost.

    A replacement's build activates in the same transaction (``_activate``): its document serves it
    from this commit on. ``retention`` is VERSION_RETENTION. Raises ProcessingError
    (``duplicate_content``) when another document took the replacement's content meanwhile.
    """
    await _lock_generations_first(conn, lease)
    parent_id = lease.row.get("parent_id")
    if parent_id is not None:
        await conn.execute(LOCK_DOCUMENT, {"id": parent_id})
        if lease.row.get("purpose") == "replace":
            await _refuse_duplicate(conn, lease.row)
    row = await _fenced(conn, MARK_READY, lease.document_id, lease.epoch, chunk_count=chunk_count)
    if row is None:
        return None
    await _close_attempt(conn, lease.document_id, lease.epoch, "ready", None, None)
    ready = Ready()
    previous_build_id: uuid.UUID | None = None
    if row["purpose"] == "replace":
        ready = await _activate(conn, row, retention=retention)
        # The durable record of the row that stopped serving: the reconciler purges its points once
        # more from this event, should the processor die before its own purge after the commit.
        previous_build_id = ready.purge_rows[0]
    else:
        await versions.settle(conn, row)
    await _emit(conn, row, "document.indexed", source, previous_build_id=previous_build_id)
    await generations.on_terminal(conn, row["knowledge_base_id"], row)
    return ready


async def _refuse_duplicate(conn: AsyncConnection, build: RowMapping) -> None:
    """Raise when another live document of the KB took this content after the replacement was accepted.

    The switch would break the one-live-copy-per-KB rule (its unique index); the replacement fails
    for good instead (the caller's transaction rolls back; the worker records the failure).
    """
    params = {"kb": build["knowledge_base_id"], "sha256": build["sha256"], "id": build["parent_id"]}
    other = (await conn.execute(SAME_CONTENT, params)).mappings().first()
    if other is not None:
        raise ProcessingError(
            ErrorCode.DUPLICATE_CONTENT, f"document {other['id']} ({other['filename']!r}) already has this content"
        )


async def _lock_generations_first(conn: AsyncConnection, lease: Lease) -> None:
    """While the KB builds a generation, take its generation locks before any document row's.

    A terminal transition may switch generations (generations.on_terminal), which locks the KB's
    generations and then updates every document; taking a document row first and the generations
    second would deadlock against a concurrent switch. Outside a re-index this is one index read.
    """
    kb_id = lease.row.get("knowledge_base_id")
    if kb_id is not None and (await conn.execute(KB_BUILDING, {"kb": kb_id})).first() is not None:
        await conn.execute(generations.LOCK_LIVE_FOR_UPDATE, {"kb": kb_id})


async def _activate(conn: AsyncConnection, build: RowMapping, *, retention: int) -> Ready:
    """Switch the (locked) document to the ready ``build``: one UPDATE of ``served_by`` and the content.

    Search keeps a hit only from a document's serving build, so before this commit every hit is the
    old version's and after it the new one's. The old serving build is tombstoned here; its points
    are purged after commit (the reconciler's tombstone pass repeats that for a build row).
    """
    document = (await conn.execute(GET_DOCUMENT, {"id": build["parent_id"]})).mappings().one()
    previous: uuid.UUID = document["served_by"] or document["id"]
    await conn.execute(SWITCH_SERVED, {"build_id": build["id"]})
    if previous != document["id"]:
        await conn.execute(TOMBSTONE_BUILD, {"id": previous})
    purged = await versions.activate(conn, document["id"], build["content_version"], retention=retention)
    keys = await versions.unreferenced(conn, purged)
    await generations.on_content_activated(conn, document["knowledge_base_id"], document["id"])
    return Ready(purge_rows=(previous,), obsolete_keys=tuple(keys))


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
    if not (error.retryable and not out_of_attempts):
        await _lock_generations_first(conn, lease)
    final = error
    if error.retryable and out_of_attempts:
        final = DocumentError(
            ErrorCode.MAX_ATTEMPTS_EXCEEDED,
            f"gave up after {lease.attempt} attempts: {error.message}",
            cause=error,
        )
    if error.retryable and not out_of_attempts:
        updated = await _fenced(
            conn, REQUEUE_HELD, lease.document_id, lease.epoch, error=_error_json(error), delay_s=retry_delay_s
        )
        outcome: Outcome = "retry_scheduled"
    else:
        updated = await _fenced(conn, MARK_FAILED, lease.document_id, lease.epoch, error=_error_json(final))
        outcome = "failed"
    if updated is None:
        return "lease_lost"
    await _close_attempt(conn, lease.document_id, lease.epoch, outcome, stage, error)
    await versions.settle(conn, updated)
    if outcome == "retry_scheduled":
        await _emit(conn, updated, "document.retry_scheduled", source, delay_s=retry_delay_s)
    else:
        await _emit(conn, updated, "document.failed", source)
    if outcome == "failed":
        await generations.on_terminal(conn, updated["knowledge_base_id"], updated)
    return outcome


async def hand_back(
    conn: AsyncConnection, lease: Lease, *, stage: str | None, source: str = "kbingest/processor"
) -> bool:
    """Give the document back at once (shutdown): queued, not counted as a failure."""
    updated = await _fenced(conn, REQUEUE_HELD, lease.document_id, lease.epoch, error=None, delay_s=0.0)
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
    row = await _fenced(conn, statement, document_id, epoch, error=_error_json(final), **params)
    if row is None:
        return "skipped"
    await _close_attempt(conn, document_id, epoch, "stalled", None, stalled)
    await versions.settle(conn, row)
    if row["status"] == "failed":
        await _emit(conn, row, "document.failed", source)
        await generations.on_terminal(conn, row["knowledge_base_id"], row)
        return "failed"
    await _emit(conn, row, "document.requeued", source)
    return "requeued"


async def requeue_event(
    conn: AsyncConnection, row: RowMapping, *, source: str = "kbingest/reconciler"
) -> dict[str, Any]:
    """Re-emit ``document.requeued`` for a queued user document whose dispatch was lost.

    Build rows have no dispatch to lose: processors poll for due work every second.
    """
    body = await _emit(conn, row, "document.requeued", source)
    if body is None:
        raise ValueError(f"build row {row['id']} has no requeue event")
    return body


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
    row = await _fenced(conn, FAIL_OBJECT_MISSING, document_id, epoch, error=_error_json(error))
    if row is None:
        return False
    await _close_attempt(conn, document_id, epoch, "failed", None, error)
    await versions.settle(conn, row)
    await _emit(conn, row, "document.failed", source)
    await generations.on_terminal(conn, row["knowledge_base_id"], row)
    return True


async def retry_failed(
    conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/api"
) -> RowMapping | None:
    """User retry: failed → queued with attempts reset; None when there is nothing to retry.

    A ready document whose replacement failed has that build queued again (it stays ready and
    serving meanwhile; the processors' poll picks the build up). Returns the user document.
    """
    if await generations.retry_serving_build(conn, document_id):  # served by a failed re-index build
        return (await conn.execute(GET_DOCUMENT, {"id": document_id})).mappings().one()
    row = (await conn.execute(RETRY_FAILED, {"id": document_id})).mappings().one_or_none()
    if row is not None:
        await versions.reopen(conn, row)
        await _emit(conn, row, "document.requeued", source)
        return row
    build = (await conn.execute(RETRY_FAILED_BUILD, {"id": document_id})).mappings().one_or_none()
    if build is None:
        return None
    await versions.reopen(conn, build)
    return (await conn.execute(GET_DOCUMENT, {"id": document_id})).mappings().one()


async def cancel_queued(
    conn: AsyncConnection, document_id: uuid.UUID, error: DocumentError, *, source: str = "kbingest/api"
) -> bool:
    """Fail a still-queued document with ``error`` (it never ran)."""
    row = (await conn.execute(CANCEL_QUEUED, {"id": document_id, "error": _error_json(error)})).mappings().one_or_none()
    if row is not None:
        await versions.settle(conn, row)
        await _emit(conn, row, "document.failed", source)
    return row is not None


async def request_delete(
    conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/api"
) -> RowMapping | None:
    """Mark ``deleting`` and emit ``document.delete_requested``; None when already gone.

    The document's builds are marked ``deleting`` too (fenced, no events of their own) and its
    versions ``superseded``: the purge (services/processor/deletion.py) removes them all.
    """
    row = (await conn.execute(REQUEST_DELETE, {"id": document_id})).mappings().one_or_none()
    if row is not None:
        # A pending retry's delayed event would hold the deletion back until it is due.
        await release_held(conn, document_id)
        await conn.execute(CLOSE_DELETED_ATTEMPT, {"id": document_id})
        builds = list((await conn.execute(DELETE_BUILDS, {"id": document_id})).scalars())
        if builds:
            await conn.execute(CLOSE_OPEN_ATTEMPTS, {"ids": builds, "outcome": "deleted"})
        await conn.execute(versions.SUPERSEDE_ALL, {"document_id": document_id})
        await _emit(conn, row, "document.delete_requested", source)
    return row


async def finish_delete(conn: AsyncConnection, document_id: uuid.UUID, *, source: str = "kbingest/processor") -> bool:
    """Tombstone a ``deleting`` document (and its builds) once their points and objects are gone."""
    row = (await conn.execute(FINISH_DELETE, {"id": document_id})).mappings().one_or_none()
    if row is None:
        return False
    await conn.execute(FINISH_DELETE_BUILDS, {"id": document_id})
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


ReplaceKind = Literal["noop", "replaced", "gone", "deleting", "duplicate"]


@dataclass(frozen=True)
class ReplaceOutcome:
    """What ``replace_content`` did.

    ``document``: the user document after the change (for ``duplicate``: the other document that
    already has this content); ``version``: the new content version; ``obsolete_keys``: object keys
    the caller deletes after commit (files of content that will never be served).
    """

    kind: ReplaceKind
    document: RowMapping | None = None
    version: int | None = None
    obsolete_keys: list[str] = field(default_factory=list)


async def replace_content(
    conn: AsyncConnection, document_id: uuid.UUID, *, values: dict[str, Any], source: str = "kbingest/api"
) -> ReplaceOutcome:
    """Give a document new content (already stored under ``values["object_key"]``), in one transaction.

    ``values``: object_key, sha256, size_bytes, media_type, original_filename, and optionally
    priority and max_attempts (default: the document's). docs/documents-change.md "Replace in place":
    identical content is a ``noop``; a document never ready takes the content itself and is requeued
    (an attempt in flight is fenced out); otherwise a ``replace`` build row processes it beside the
    serving version, superseding a replacement still pending. The caller deletes the new object on
    ``noop``/``gone``/``deleting``/``duplicate``, and ``obsolete_keys`` after commit.
    """
    document = (await conn.execute(LOCK_DOCUMENT, {"id": document_id})).mappings().one_or_none()
    if document is None or document["deleted_at"] is not None or document["parent_id"] is not None:
        return ReplaceOutcome("gone")
    if document["status"] == "deleting":
        return ReplaceOutcome("deleting", document)
    current = await versions.current(conn, document_id)
    if any(v is not None and v["sha256"] == values["sha256"] for v in (current.active, current.pending)):
        return ReplaceOutcome("noop", document)
    params = {"kb": document["knowledge_base_id"], "sha256": values["sha256"], "id": document_id}
    other = (await conn.execute(SAME_CONTENT, params)).mappings().first()
    if other is not None:
        return ReplaceOutcome("duplicate", other)
    version = await versions.next_version(conn, document_id)
    content = {column: values[column] for column in versions.CONTENT_COLUMNS}
    extra = {"priority": values.get("priority"), "max_attempts": values.get("max_attempts")}
    if current.active is None:
        return await _replace_in_place(conn, document, version, content | extra, source)
    superseded = (await conn.execute(SUPERSEDE_BUILDS, {"id": document_id})).mappings().all()
    if superseded:
        await conn.execute(CLOSE_OPEN_ATTEMPTS, {"ids": [b["id"] for b in superseded], "outcome": "superseded"})
    keys = await versions.supersede(conn, document_id, [b["content_version"] for b in superseded])
    build_id = uuid.uuid4()
    build = (
        (
            await conn.execute(
                INSERT_REPLACE_BUILD,
                {**content, **extra, "build_id": build_id, "id": document_id, "content_version": version},
            )
        )
        .mappings()
        .one()
    )
    await versions.insert(conn, document_id, version, values=content, build_id=build_id)
    await _emit(conn, build, "document.uploaded", source)  # → document.version_created
    return ReplaceOutcome("replaced", document, version, await versions.unreferenced(conn, keys))


async def _replace_in_place(
    conn: AsyncConnection, document: RowMapping, version: int, values: dict[str, Any], source: str
) -> ReplaceOutcome:
    """A document with no active version is re-pointed at the new content and requeued."""
    row = (await conn.execute(REPOINT, {**values, "id": document["id"], "content_version": version})).mappings().one()
    await conn.execute(CLOSE_OPEN_ATTEMPTS, {"ids": [document["id"]], "outcome": "superseded"})
    keys = await versions.supersede(conn, document["id"], [document["content_version"]])
    await versions.insert(conn, document["id"], version, values=values, build_id=document["id"])
    # A pending retry's delayed event would hold the new content's event back until it is due.
    await release_held(conn, document["id"])
    await _emit(conn, row, "document.version_created", source)
    return ReplaceOutcome("replaced", row, version, await versions.unreferenced(conn, keys))
