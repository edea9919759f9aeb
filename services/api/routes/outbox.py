"""Dead letters of the outbox: list them, replay one."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from services.api.deps import CurrentKey, DbDep, require_unscoped
from services.api.routes.responses import error_responses
from shared.deadletters import DeadLetter, DeadReason, list_dead, replay
from shared.errors import ApiError

router = APIRouter(tags=["outbox"])


class DeadLetterList(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None


class ReplayAccepted(BaseModel):
    id: uuid.UUID
    status: Literal["pending"]


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned")
    return int(cursor)


@router.get("/v1/outbox/dead", response_model=DeadLetterList, responses=error_responses(422))
async def list_dead_letters(
    key: CurrentKey,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    reason: DeadReason | None = None,
) -> DeadLetterList:
    """Oldest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    require_unscoped(key)
    async with db.transaction() as conn:
        letters = await list_dead(conn, limit=limit + 1, after_seq=_decode_cursor(cursor), reason=reason)
    page = letters[:limit]
    next_cursor = str(page[-1].seq) if len(letters) > limit else None
    return DeadLetterList(items=page, next_cursor=next_cursor)


@router.post(
    "/v1/outbox/{event_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReplayAccepted,
    responses=error_responses(409),
)
async def replay_event(event_id: uuid.UUID, key: CurrentKey, db: DbDep) -> ReplayAccepted:
    """Dead → pending with a fresh attempt budget; the relay delivers it again."""
    require_unscoped(key)
    async with db.transaction() as conn:
        result = await replay(conn, event_id)
    if result == "not_found":
        raise ApiError(404, "not_found", "event not found")
    if result == "not_dead":
        raise ApiError(409, "not_dead", "only dead-lettered events can be replayed", {"event_id": str(event_id)})
    return ReplayAccepted(id=event_id, status="pending")
