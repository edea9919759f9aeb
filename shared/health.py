"""``/healthz`` and ``/readyz`` for every service, with one body shape (docs/api.md "Service endpoints").

``/healthz``: 200 ``{"status": "ok"}`` while the process serves HTTP.
``/readyz``: 200 ``{"status": "ready", "checks": {...}, ...details}`` when every check is ``"ok"``;
else 503 ``{"status": "unavailable", "failed": [...], "checks": {...}, "error": {"code": "not_ready",
"message": ...}, ...details}`` naming the failed checks. A service adds its own ``details`` (ids, leader…).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from shared.aio import wait_for

OK: Final = "ok"
CHECK_TIMEOUT_S: Final = 3.0
# A failure's text is shown to operators; a driver's exception can be long.
DETAIL_CHARS: Final = 300


@dataclass(frozen=True)
class Readiness:
    """Each check's result (``"ok"`` or what is wrong) and what else the service reports."""

    checks: Mapping[str, str]
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, result in self.checks.items() if result != OK]


Probe = Callable[[], Awaitable[object]]


async def probe_all(probes: Mapping[str, Probe], timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, str]:
    """Run each dependency probe with a deadline; a probe's failure is its check's result."""
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            await wait_for(probe(), timeout_s)
            checks[name] = OK
        except Exception as exc:  # reported in the check: any failure of a probe means "not ready"
            checks[name] = f"failed: {type(exc).__name__}: {exc}"[:DETAIL_CHARS]
    return checks


def readiness_response(readiness: Readiness) -> JSONResponse:
    failed = readiness.failed
    body: dict[str, Any] = {"status": "ready", "checks": dict(readiness.checks), **readiness.details}
    if not failed:
        return JSONResponse(body)
    reasons = "; ".join(f"{name}: {readiness.checks[name]}" for name in failed)
    body |= {
        "status": "unavailable",
        "failed": failed,
        "error": {"code": "not_ready", "message": f"not ready: {reasons}"[:DETAIL_CHARS]},
    }
    return JSONResponse(body, status_code=503)


def add_health_routes(target: FastAPI | APIRouter, readiness: Callable[[Request], Awaitable[Readiness]]) -> None:
    """Mount ``/healthz`` and ``/readyz`` on ``target``; ``readiness`` computes the checks for one request."""

    @target.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": OK}

    @target.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        return readiness_response(await readiness(request))
