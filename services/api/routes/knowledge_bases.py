"""Knowledge bases: create, list, read with counts and index settings, change settings, delete (async purge)."""

from __future__ import annotations

import uuid
from typing import Final

import sqlalchemy.exc
from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.deps import CurrentKey, DbDep, StateDep, require_kb_access
from services.api.routes.reindex import start_reindex, valid_settings
from services.api.routes.responses import error_responses
from services.api.schemas import Accepted, KnowledgeBase, KnowledgeBaseCreate, KnowledgeBaseList, KnowledgeBaseUpdate
from services.api.uploads import kb_lock
from shared import generations
from shared.errors import ApiError
from shared.event_data import KnowledgeBaseDeletedData
from shared.lifecycle import request_delete
from shared.outbox import add_event
from shared.settings import Settings
from shared.vocabulary import STATUSES

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge bases"])
ERRORS = error_responses()
CONFLICT_ERRORS = error_responses(409, 422)


# Documents whose index a settings change would make inconsistent (build rows are not documents).
HAS_DOCUMENTS: Final = text(
    "SELECT EXISTS (SELECT 1 FROM documents WHERE knowledge_base_id = :id AND parent_id IS NULL "
    "AND deleted_at IS NULL AND status <> 'deleting')"
)


async def _with_index(conn: AsyncConnection, settings: Settings, row: RowMapping, **extra: object) -> KnowledgeBase:
    index = (await generations.kb_indexes(conn, [row["id"]], settings))[row["id"]]
    return KnowledgeBase(**row, **index.fields(), **extra)


@router.post("", status_code=201, response_model=KnowledgeBase, responses=CONFLICT_ERRORS)
async def create_kb(body: KnowledgeBaseCreate, key: CurrentKey, state: StateDep, response: Response) -> KnowledgeBase:
    """Create a KB; ``chunk_size``/``chunk_overlap``/``embedding_model`` set its first index generation."""
    if key.knowledge_base_ids is not None:
        raise ApiError(403, "forbidden", "this API key is limited to some knowledge bases and may not create one")
    valid_settings(generations.resolve(body.model_dump(exclude_none=True), state.settings))
    db = state.db
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
            await generations.create_first(
                conn,
                kb_id,
                chunk_size=body.chunk_size,
                chunk_overlap=body.chunk_overlap,
                embedding_model=body.embedding_model,
            )
            kb = await _with_index(
                conn,
                state.settings,
                row,
                counts=dict.fromkeys(STATUSES, 0),
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
    return kb


@router.get("", response_model=KnowledgeBaseList, responses=ERRORS)
async def list_kbs(key: CurrentKey, state: StateDep) -> KnowledgeBaseList:
    async with state.db.transaction() as conn:
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
        rows = [r for r in rows if key.allows(r["id"])]
        indexes = await generations.kb_indexes(conn, [r["id"] for r in rows], state.settings)
    return KnowledgeBaseList(items=[KnowledgeBase(**r, **indexes[r["id"]].fields()) for r in rows])


@router.get("/{kb_id}", response_model=KnowledgeBase, responses=ERRORS)
async def get_kb(kb_id: uuid.UUID, key: CurrentKey, state: StateDep) -> KnowledgeBase:
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        row = await queries.live_kb(conn, kb_id)
        counts = await queries.kb_counts(conn, kb_id)
        return await _with_index(conn, state.settings, row, counts=counts)


@router.patch("/{kb_id}", response_model=KnowledgeBase, responses={202: {"model": KnowledgeBase}, **CONFLICT_ERRORS})
async def update_kb(
    kb_id: uuid.UUID, body: KnowledgeBaseUpdate, key: CurrentKey, state: StateDep, response: Response
) -> KnowledgeBase:
    """Change index settings: in place on an empty KB (200); with documents only by a re-index (202).

    A KB with documents answers 409 ``reindex_required`` unless the body says ``"reindex": true``:
    its index must never mix chunks made with different settings.
    """
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        row = await queries.get_kb(conn, kb_id)
        current = await generations.active_settings(conn, kb_id, state.settings)
        if row is None or current is None:
            raise queries.kb_not_found()
        wanted = valid_settings(
            generations.resolve(
                {**current.as_json(), **body.model_dump(exclude_none=True, exclude={"reindex"})},
                state.settings,
                generation=current.generation,
            )
        )
        if body.reindex:
            await start_reindex(conn, state.settings, kb_id, wanted)
            response.status_code = status.HTTP_202_ACCEPTED
        elif wanted != current:
            if (await conn.execute(HAS_DOCUMENTS, {"id": kb_id})).scalar_one():
                raise ApiError(
                    409,
                    "reindex_required",
                    "this knowledge base has documents: changing its index settings needs a re-index; "
                    'send "reindex": true to start one',
                    {"current": current.as_json(), "requested": wanted.as_json()},
                )
            await generations.update_active_settings(conn, kb_id, wanted)
        counts = await queries.kb_counts(conn, kb_id)
        return await _with_index(conn, state.settings, row, counts=counts)


@router.delete("/{kb_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=ERRORS)
async def delete_kb(kb_id: uuid.UUID, key: CurrentKey, db: DbDep) -> Accepted:
    """Mark the KB deleted (its name is free again) and request deletion of each document."""
    require_kb_access(key, kb_id)
    async with db.transaction() as conn:
        # Waits for uploads committing into this KB, so the list below includes their documents.
        if not await kb_lock.lock_for_delete(conn, kb_id):
            raise queries.kb_not_found()
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
            data=KnowledgeBaseDeletedData(knowledge_base_id=kb_id, documents=len(doc_ids)).to_json(),
            source="kbingest/api",
        )
    return Accepted(id=kb_id, status="deleting")
