"""Request dependencies: settings, database, object store, the caller's key."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from services.api.state import AppState
from shared.apikeys import KeyRecord, find_key, touch_key
from shared.db import Database
from shared.errors import ApiError


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.kb
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_db(state: StateDep) -> Database:
    return state.db


DbDep = Annotated[Database, Depends(get_db)]


async def current_key(request: Request, state: StateDep) -> KeyRecord:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    async with state.db.transaction() as conn:
        record = await find_key(conn, token.strip())
        if record is not None:
            await touch_key(conn, record.id)
    if record is None:
        raise ApiError(
            401, "invalid_api_key", "the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    return record


CurrentKey = Annotated[KeyRecord, Depends(current_key)]


def require_kb_access(key: KeyRecord, kb_id: uuid.UUID) -> None:
    if not key.allows(kb_id):
        raise ApiError(403, "forbidden", "this API key may not access this knowledge base")
