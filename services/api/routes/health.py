"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.api.deps import StateDep
from shared.aio import wait_for

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}

    async def database() -> None:
        async with state.db.connection() as conn:
            await conn.execute(text("SELECT 1"))

    async def object_store() -> None:
        await state.store.ensure_bucket()

    for name, check in (("database", database), ("object_store", object_store)):
        try:
            await wait_for(check(), READY_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return JSONResponse(
            {
                "status": "unavailable",
                "failed": failed,
                "checks": checks,
                "error": {"code": "not_ready", "message": f"not ready: {', '.join(failed)}"},
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})
