"""Request dependencies: settings, database, object store, the caller's key."""

from __future__ import annotations

import uuid
from typing import Annotated, Final

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


# Where the auth-first middleware leaves the caller's key for the route (``request.state``).
KEY_STATE: Final = "api_key"


async def authenticate(db: Database, authorization: str) -> KeyRecord:
    """The live key named by an ``Authorization`` header, or a 401 ``ApiError``."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    async with db.transaction() as conn:
        record = await find_key(conn, token.strip())
        if record is not None:
            await touch_key(conn, record.id)
    if record is None:
        raise ApiError(
            401, "invalid_api_key", "the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    return record


async def current_key(request: Request, state: StateDep) -> KeyRecord:
    """The key the middleware checked before any body was read; looked up here for a route outside /v1."""
    record: KeyRecord | None = getattr(request.state, KEY_STATE, None)
    return record if record is not None else await authenticate(state.db, request.headers.get("authorization", ""))


CurrentKey = Annotated[KeyRecord, Depends(current_key)]


def require_kb_access(key: KeyRecord, kb_id: uuid.UUID) -> None:
    if not key.allows(kb_id):
        raise ApiError(403, "forbidden", "this API key may not access this knowledge base")


def require_unscoped(key: KeyRecord) -> None:
    """For what spans every knowledge base (pipeline health, dead letters, metrics)."""
    if key.knowledge_base_ids is not None:
        raise ApiError(403, "forbidden_scope", "this needs an API key that is not limited to some knowledge bases")
