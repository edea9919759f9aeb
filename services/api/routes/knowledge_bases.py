"""Knowledge bases: create, list, read with counts, delete (async purge)."""

from __future__ import annotations

import uuid

import sqlalchemy.exc
from fastapi import APIRouter, Response, status
from sqlalchemy import text

from services.api import queries
from services.api.deps import CurrentKey, DbDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.schemas import Accepted, KnowledgeBase, KnowledgeBaseCreate, KnowledgeBaseList
from services.api.uploads import kb_lock
from shared.errors import ApiError
from shared.lifecycle import request_delete
from shared.outbox import add_event

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge bases"])
ERRORS = error_responses()


@router.post("", status_code=201, response_model=KnowledgeBase, responses=error_responses(409))
async def create_kb(body: KnowledgeBaseCreate, key: CurrentKey, db: DbDep, response: Response) -> KnowledgeBase:
    if key.knowledge_base_ids is not None:
        raise ApiError(403, "forbidden", "this API key is limited to some knowledge bases and may not create one")
    kb_id = uuid.uuid4()
    name = body.name.strip()
    try:
        async with db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        text(
                            "INSERT INTO knowledge_bases (id, name) VALUES (:id, :name) "
                            "RETURNING id, name, created_at, updated_at"
                        ),
                        {"id": kb_id, "name": name},
                    )
                )
                .mappings()
                .one()
            )
    except sqlalchemy.exc.IntegrityError as exc:
        async with db.transaction() as conn:
            existing = (
                await conn.execute(
                    text("SELECT id FROM knowledge_bases WHERE name = :name AND deleted_at IS NULL"), {"name": name}
                )
            ).scalar_one_or_none()
        raise ApiError(
            409,
            "duplicate_name",
            f"a knowledge base named '{name}' already exists",
            {"knowledge_base_id": str(existing) if existing else None},
        ) from exc
    response.headers["Location"] = f"/v1/knowledge-bases/{kb_id}"
    return KnowledgeBase(**row, counts={s: 0 for s in ("queued", "processing", "ready", "failed", "deleting")})


@router.get("", response_model=KnowledgeBaseList, responses=ERRORS)
async def list_kbs(key: CurrentKey, db: DbDep) -> KnowledgeBaseList:
    async with db.transaction() as conn:
        rows = (
            (
                await conn.execute(
                    text(
                        "SELECT id, name, created_at, updated_at FROM knowledge_bases "
                        "WHERE deleted_at IS NULL ORDER BY created_at DESC, id"
                    )
                )
            )
            .mappings()
            .all()
        )
    return KnowledgeBaseList(items=[KnowledgeBase(**r) for r in rows if key.allows(r["id"])])


@router.get("/{kb_id}", response_model=KnowledgeBase, responses=ERRORS)
async def get_kb(kb_id: uuid.UUID, key: CurrentKey, db: DbDep) -> KnowledgeBase:
    require_kb_access(key, kb_id)
    async with db.transaction() as conn:
        row = await queries.get_kb(conn, kb_id)
        if row is None:
            raise ApiError(404, "not_found", "knowledge base not found")
        counts = await queries.kb_counts(conn, kb_id)
    return KnowledgeBase(**row, counts=counts)


@router.delete("/{kb_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=ERRORS)
async def delete_kb(kb_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Accepted:
    """Mark the KB deleted (its name is free again) and request deletion of each document."""
    require_kb_access(key, kb_id)
    async with db.transaction() as conn:
        # Waits for uploads committing into this KB, so the list below includes their documents.
        if not await kb_lock.lock_for_delete(conn, kb_id):
            raise ApiError(404, "not_found", "knowledge base not found")
        await conn.execute(
            text("UPDATE knowledge_bases SET deleted_at = now(), updated_at = now() WHERE id = :id"), {"id": kb_id}
        )
        doc_ids = (
            (
                await conn.execute(
                    text(
                        # User documents only: deleting one takes its build rows with it.
                        "SELECT id FROM documents WHERE knowledge_base_id = :id AND deleted_at IS NULL "
                        "AND status <> 'deleting' AND parent_id IS NULL"
                    ),
                    {"id": kb_id},
                )
            )
            .scalars()
            .all()
        )
        for doc_id in doc_ids:
            await request_delete(conn, doc_id)
        await add_event(
            conn,
            event_type="knowledge_base.deleted",
            aggregate_id=kb_id,
            aggregate_type="knowledge_base",
            data={"knowledge_base_id": str(kb_id), "status": "deleted", "documents": len(doc_ids)},
            source="kbingest/api",
        )
    return Accepted(id=kb_id, status="deleting")
