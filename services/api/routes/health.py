"""Liveness and readiness (shared/health.py): ready when Postgres and the bucket answer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from services.api.deps import get_state
from shared.health import Readiness, add_health_routes, probe_all

router = APIRouter(tags=["health"])


async def _readiness(request: Request) -> Readiness:
    state = get_state(request)

    async def database() -> None:
        async with state.db.connection() as conn:
            await conn.execute(text("SELECT 1"))

    return Readiness(await probe_all({"database": database, "object_store": state.store.ensure_bucket}))


add_health_routes(router, _readiness)
