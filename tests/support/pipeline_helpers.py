"""Helpers for reconciler / pipeline tests: documents straight through lifecycle, SQL pokes, processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import uvicorn
from pydantic import SecretStr
from sqlalchemy import text

from shared import lifecycle
from shared.db import Database, worker_database
from shared.settings import Settings
from shared.storage import ObjectStore, object_key
from tests.support import servers
from tests.support.asgi import read_body
from tests.support.poll import eventually, until


def open_db(settings: Settings, max_connections: int = 2) -> Database:
    return worker_database(settings.database_url, service="test", max_connections=max_connections)


async def execute(db: Database, sql: str, **params: Any) -> int:
    async with db.transaction() as conn:
        result = await conn.execute(text(sql), params)
        return int(getattr(result, "rowcount", 0) or 0)


async def fetch(db: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    """The tests' raw SQL: one statement in a transaction; its rows, or [] for a statement without rows."""
    async with db.transaction() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(r) for r in result.mappings()] if result.returns_rows else []


async def fetch_one(db: Database, sql: str, **params: Any) -> dict[str, Any]:
    rows = await fetch(db, sql, **params)
    assert len(rows) == 1, rows
    return rows[0]


async def document_status(db: Database, document_id: uuid.UUID) -> str:
    return str((await fetch_one(db, "SELECT status FROM documents WHERE id = :id", id=document_id))["status"])


async def create_kb(db: Database, name: str | None = None) -> uuid.UUID:
    kb_id = uuid.uuid4()
    await execute(
        db, "INSERT INTO knowledge_bases (id, name) VALUES (:id, :name)", id=kb_id, name=name or f"kb-{kb_id.hex[:8]}"
    )
    return kb_id


async def create_document(
    db: Database,
    store: ObjectStore | None,
    kb_id: uuid.UUID,
    *,
    content: bytes | None = None,
    max_attempts: int = 3,
    priority: str = "normal",
) -> uuid.UUID:
    """A queued document with its ``document.uploaded`` event, as the API makes it (object first)."""
    doc_id = uuid.uuid4()
    body = content if content is not None else f"hello {doc_id}".encode()
    key = object_key(kb_id, doc_id)
    if store is not None:
        await store.ensure_bucket()
        await store.put_bytes(key, body, content_type="text/plain")
    values = {
        "id": doc_id,
        "knowledge_base_id": kb_id,
        "batch_id": None,
        "filename": f"{doc_id.hex}.txt",
        "original_filename": f"{doc_id.hex}.txt",
        "media_type": "text/plain",
        "size_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "object_key": key,
        "priority": priority,
        "max_attempts": max_attempts,
    }
    async with db.transaction() as conn:
        await lifecycle.create_document(conn, values=values)
    return doc_id


def content_values(kb_id: uuid.UUID, body: bytes) -> dict[str, Any]:
    """The content a replacement names (``lifecycle.replace_content``'s values): ``body`` under a new object key."""
    return {
        "object_key": object_key(kb_id, uuid.uuid4()),
        "sha256": hashlib.sha256(body).hexdigest(),
        "size_bytes": len(body),
        "media_type": "text/plain",
        "original_filename": "replacement.txt",
    }


async def stored_content(store: ObjectStore, kb_id: uuid.UUID, body: bytes) -> dict[str, Any]:
    """``content_values`` with its object written first, as the API writes it before the row."""
    values = content_values(kb_id, body)
    await store.put_bytes(values["object_key"], body, content_type="text/plain")
    return values


async def replace_content(db: Database, doc_id: uuid.UUID, values: dict[str, Any]) -> lifecycle.ReplaceOutcome:
    async with db.transaction() as conn:
        return await lifecycle.replace_content(conn, doc_id, values=values)


async def claim(db: Database, doc_id: uuid.UUID, owner: str = "test-processor") -> lifecycle.Lease:
    async with db.transaction() as conn:
        lease = await lifecycle.claim(conn, doc_id, owner=owner)
    assert lease is not None
    return lease


async def deliver_all(db: Database) -> None:
    """What the relay does once subscribers answered 2xx."""
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE delivered_at IS NULL AND dead_at IS NULL")


async def age_document(db: Database, doc_id: uuid.UUID, seconds: float) -> None:
    """Move a document's clocks (and its events') into the past."""
    await execute(
        db,
        "UPDATE documents SET updated_at = updated_at - make_interval(secs => :s), "
        "available_at = available_at - make_interval(secs => :s), "
        "heartbeat_at = heartbeat_at - make_interval(secs => :s) WHERE id = :id",
        id=doc_id,
        s=seconds,
    )
    await execute(
        db,
        "UPDATE outbox SET created_at = created_at - make_interval(secs => :s) WHERE aggregate_id = :id",
        id=doc_id,
        s=seconds,
    )


async def events_of(db: Database, doc_id: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch(
        db,
        "SELECT type, payload, delivered_at, dead_at, dead_reason FROM outbox WHERE aggregate_id = :id ORDER BY seq",
        id=doc_id,
    )


async def register_processor(db: Database, *, ready: bool, started_ago_s: float = 0.0) -> str:
    """The processors row a processor writes at start-up (services/processor/registry.py), seen from outside."""
    pid = f"test-host:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    await execute(
        db,
        "INSERT INTO processors (id, hostname, pid, concurrency, started_at, ready_at, last_seen) "
        "VALUES (:id, 'test-host', 1, 2, now() - make_interval(secs => :ago), "
        "CASE WHEN :ready THEN now() END, now())",
        id=pid,
        ago=started_ago_s,
        ready=ready,
    )
    return pid


async def alert_codes(api: httpx.AsyncClient) -> set[str]:
    response = await api.get("/v1/pipeline")
    assert response.status_code == 200, response.text
    return {alert["code"] for alert in response.json()["alerts"]}


# What every ``kbingest`` child needs to reach the test database, bucket and data dir (the API key when set).
SERVICE_FIELDS: Final = (
    "database_url",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_bucket",
    "data_dir",
    "api_key",
)


def service_env(settings: Settings, *fields: str, **extra: str) -> dict[str, str]:
    """The one environment builder for ``kbingest`` subprocesses: this process's environment, ``settings``'
    ``SERVICE_FIELDS`` and ``fields`` as ``KBINGEST_*`` variables (unset ones left out), then ``extra``."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    env = {**os.environ, f"{prefix}LOG_LEVEL": "INFO"}
    for name in (*SERVICE_FIELDS, *fields):
        value = getattr(settings, name)
        if value is not None:
            env[f"{prefix}{name}".upper()] = _env_value(value)
    env.update(extra)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


# ``kbingest`` as this interpreter runs it (no installed script needed).
CLI: Final = (sys.executable, "-m", "services.cli.main")


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``kbingest ARGS`` run to its end from the repository: the finished process, its output as text."""
    return subprocess.run(
        [*CLI, *args], cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def start_cli(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [*CLI, *args],
            cwd=servers.ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def wait_http_ok(
    url: str, proc: subprocess.Popen[bytes], log_path: Path | None = None, timeout_s: float = 60.0
) -> None:
    """Poll ``url`` (a /readyz) until 200; fail at once if ``proc`` exits, with its log's tail when known."""

    def ok() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def exited() -> str | None:
        return None if proc.poll() is None else f"the process exited {proc.returncode}"

    try:
        until(ok, timeout_s=timeout_s, what=f"{url} to answer 200", give_up=exited)
    except AssertionError as exc:
        tail = log_path.read_text()[-4000:] if log_path is not None else "(output not captured)"
        raise AssertionError(f"{exc}:\n{tail}") from exc


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@contextlib.asynccontextmanager
async def http_sink(port: int) -> AsyncIterator[list[dict[str, Any]]]:
    """A subscriber on 127.0.0.1:``port`` answering 200 to everything; yields the JSON bodies it got."""
    received: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        if scope["method"] == "POST" and body:
            received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), timeout_s=20, every_s=0.05)
    try:
        yield received
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)
