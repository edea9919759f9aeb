"""shared/health.py: one /healthz + /readyz body shape for every service."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from shared.health import Readiness, add_health_routes, probe_all


def _app(checks: dict[str, str]) -> FastAPI:
    app = FastAPI()

    async def readiness(_request: Request) -> Readiness:
        return Readiness(checks, {"service_id": "s-1"})

    add_health_routes(app, readiness)
    return app


def test_healthz_and_ready() -> None:
    client = TestClient(_app({"database": "ok"}))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok"}, "service_id": "s-1"}


def test_not_ready_names_the_failed_check() -> None:
    response = TestClient(_app({"database": "ok", "object_store": "failed: OSError: refused"})).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["failed"] == ["object_store"]
    assert body["error"]["code"] == "not_ready" and "object_store: failed: OSError" in body["error"]["message"]
    assert body["checks"]["database"] == "ok" and body["service_id"] == "s-1"


def test_probe_all_reports_failures_and_timeouts() -> None:
    async def ok() -> None:
        return None

    async def broken() -> None:
        raise ConnectionRefusedError("no server")

    async def hangs() -> None:
        await asyncio.Event().wait()

    checks = asyncio.run(probe_all({"a": ok, "b": broken, "c": hangs}, timeout_s=0.5))
    assert checks["a"] == "ok"
    assert checks["b"] == "failed: ConnectionRefusedError: no server"
    assert checks["c"].startswith("failed: TimeoutError")
