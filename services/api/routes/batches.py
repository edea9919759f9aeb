"""Batches: many files in one request, each with its own result; progress, cancel, retry-failed."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status
from sqlalchemy import text

from services.api import queries
from services.api.deps import CurrentKey, DbDep, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.schemas import Accepted, BatchCreated, BatchFileResult, BatchProgress, ErrorDetail
from services.api.uploads import kb_lock
from services.api.uploads.receive import receive_multipart
from shared.errors import ApiError, DocumentError, ErrorCode
from shared.lifecycle import cancel_queued, retry_failed
from shared.vocabulary import STATUSES

router = APIRouter(tags=["batches"])
ERRORS = error_responses()

# A batch's user documents (build rows never carry a batch id; the filter says so where it matters).
BATCH_COUNTS = text(
    f"SELECT status, count(*) AS n FROM documents WHERE batch_id = :id AND deleted_at IS NULL "
    f"AND {queries.USER_DOCUMENT} GROUP BY status"
)
BATCH_DOCUMENTS_IN = text(
    f"SELECT id FROM documents WHERE batch_id = :id AND status = :status AND deleted_at IS NULL "
    f"AND {queries.USER_DOCUMENT}"
)


@router.post(
    "/v1/knowledge-bases/{kb_id}/batches",
    status_code=201,
    response_model=BatchCreated,
    responses=error_responses(413, 422),
)
async def create_batch(kb_id: uuid.UUID, request: Request, key: CurrentKey, state: StateDep) -> BatchCreated:
    """Each ``file`` part is uploaded on its own: one bad file never sinks the others."""
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        await queries.live_kb(conn, kb_id)
    form = await receive_multipart(
        request,
        max_file_bytes=state.settings.max_upload_bytes,
        max_files=state.settings.max_batch_files,
        fail_fast=False,
        max_body_bytes=state.settings.max_batch_bytes,
    )
    try:
        files = [f for f in form.files if f.field_name == "file"]
        if not files:
            raise ApiError(422, "validation_error", "at least one multipart field 'file' is required")
        batch_id = uuid.uuid4()
        async with state.db.transaction() as conn:
            if await kb_lock.lock_for_upload(conn, kb_id) is None:
                raise queries.kb_not_found()
            created = (
                await conn.execute(
                    text(
                        "INSERT INTO batches (id, knowledge_base_id, total) VALUES (:id, :kb, :total) "
                        "RETURNING created_at"
                    ),
                    {"id": batch_id, "kb": kb_id, "total": len(files)},
                )
            ).scalar_one()
        priority = form.fields.get("priority", "normal") or "normal"
        results: list[BatchFileResult] = []
        for received in files:
            try:
                outcome = await state.uploads.upload(
                    kb_id=kb_id, key=key, received=received, priority=priority, batch_id=batch_id
                )
                results.append(
                    BatchFileResult(filename=received.filename, status_code=outcome.status_code, document=outcome.body)
                )
            except ApiError as exc:
                results.append(
                    BatchFileResult(
                        filename=received.filename,
                        status_code=exc.status_code,
                        error=ErrorDetail(code=exc.code, message=exc.message, **exc.extra),
                    )
                )
    finally:
        form.cleanup()
    return BatchCreated(id=batch_id, knowledge_base_id=kb_id, total=len(files), created_at=created, results=results)


async def _load_batch(db: DbDep, key: CurrentKey, batch_id: uuid.UUID) -> dict[str, object]:
    async with db.transaction() as conn:
        row = (
            (
                await conn.execute(
                    text("SELECT id, knowledge_base_id, total, created_at, cancelled_at FROM batches WHERE id = :id"),
                    {"id": batch_id},
                )
            )
            .mappings()
            .one_or_none()
        )
    if row is None or not key.allows(row["knowledge_base_id"]):
        raise ApiError(404, "not_found", "batch not found")
    return dict(row)


@router.get("/v1/batches/{batch_id}", response_model=BatchProgress, responses=ERRORS)
async def batch_progress(batch_id: uuid.UUID, key: CurrentKey, db: DbDep) -> BatchProgress:
    batch = await _load_batch(db, key, batch_id)
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    async with db.transaction() as conn:
        for row in (await conn.execute(BATCH_COUNTS, {"id": batch_id})).mappings():
            counts[row["status"]] = int(row["n"])
    accepted = sum(counts.values())
    done = counts["ready"] + counts["failed"]
    percent = round(100.0 * done / accepted, 1) if accepted else 100.0
    return BatchProgress(**batch, **counts, percent=percent)


@router.post(
    "/v1/batches/{batch_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=ERRORS
)
async def cancel_batch(batch_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Accepted:
    """Queued documents of the batch fail with ``cancelled``; running ones finish."""
    await _load_batch(db, key, batch_id)
    error = DocumentError(ErrorCode.CANCELLED, "the batch was cancelled before this document was processed")
    async with db.transaction() as conn:
        await conn.execute(
            text("UPDATE batches SET cancelled_at = coalesce(cancelled_at, now()) WHERE id = :id"), {"id": batch_id}
        )
        ids = (await conn.execute(BATCH_DOCUMENTS_IN, {"id": batch_id, "status": "queued"})).scalars().all()
        for doc_id in ids:
            await cancel_queued(conn, doc_id, error)
    return Accepted(id=batch_id, status="cancelled")


@router.post(
    "/v1/batches/{batch_id}/retry-failed",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=ERRORS,
)
async def retry_failed_in_batch(batch_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Accepted:
    await _load_batch(db, key, batch_id)
    async with db.transaction() as conn:
        ids = (await conn.execute(BATCH_DOCUMENTS_IN, {"id": batch_id, "status": "failed"})).scalars().all()
        for doc_id in ids:
            await retry_failed(conn, doc_id)
    return Accepted(id=batch_id, status="retrying")
