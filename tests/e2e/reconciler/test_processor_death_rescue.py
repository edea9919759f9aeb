"""Real processes: kill -9 of a processor mid-document is rescued within seconds (its presence lock is gone);
SIGSTOP is not (the lock is still held) and waits for the stale heartbeat, and the woken zombie writes nothing.

The stack is an API (which owns the local vector store), a reconciler and two processors on the test
database. The embedding stage is held by a slow fake provider, so the victim is mid-document when the
signal lands; the provider is fast again before it does, so the survivor finishes the document.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.db import Database
from shared.settings import Settings
from tests.support import servers
from tests.support.fake_embedder import FakeEmbedder, fake_embedder
from tests.support.pipeline_helpers import fetch, fetch_one, service_env, start_cli, stop_process, wait_http_ok
from tests.support.poll import eventually

pytestmark = pytest.mark.e2e

# Long enough that the victim is still embedding when the signal lands, whatever the machine's load.
HOLD_EMBEDDING_S = 600.0
READY_TIMEOUT_S = 240.0
# The fast path's p99 is about 1 s (docs/benchmarks.md); the stale path needs STALE_AFTER_S (30 s) or more.
FAST_RESCUE_DEADLINE_S = 10.0
SHORT_STALE = {
    "KBINGEST_HEARTBEAT_INTERVAL_S": "1",
    "KBINGEST_STALE_AFTER_S": "5",
    "KBINGEST_RECONCILE_INTERVAL_S": "1",
}
TEXT = "\n\n".join(f"Paragraph {i}: tide pools, anemones and the crabs that hide under rocks." for i in range(40))


@dataclass
class Stack:
    api: str
    processors: dict[int, subprocess.Popen[bytes]]
    logs: dict[int, Path]
    reconciler_log: Path
    provider: FakeEmbedder


def _start(name: str, env: dict[str, str], port_var: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = servers.free_port()
    proc = start_cli([name], {**env, port_var: str(port)}, log)
    return proc, f"http://127.0.0.1:{port}"


def _stack(settings: Settings, tmp_path: Path, extra: dict[str, str]) -> Iterator[Stack]:
    with fake_embedder() as provider:
        env = service_env(
            settings,
            KBINGEST_EMBEDDING_MODEL="openai/text-embedding-3-small",
            KBINGEST_EMBEDDING_API_BASE=provider.base_url,
            **extra,
        )
        api_port = servers.free_port()
        env["KBINGEST_API_PORT"] = str(api_port)
        started: list[subprocess.Popen[bytes]] = []
        try:
            api = start_cli(["api"], env, tmp_path / "api.log")
            started.append(api)
            wait_http_ok(f"http://127.0.0.1:{api_port}/readyz", api, tmp_path / "api.log", timeout_s=READY_TIMEOUT_S)
            reconciler, reconciler_url = _start(
                "reconciler", env, "KBINGEST_RECONCILER_PORT", tmp_path / "reconciler.log"
            )
            started.append(reconciler)
            processors: dict[int, subprocess.Popen[bytes]] = {}
            logs: dict[int, Path] = {}
            urls = []
            for n in range(2):
                log = tmp_path / f"processor-{n}.log"
                proc, url = _start("processor", env, "KBINGEST_PROCESSOR_PORT", log)
                started.append(proc)
                processors[proc.pid], logs[proc.pid] = proc, log
                urls.append((url, proc, log))
            wait_http_ok(f"{reconciler_url}/readyz", reconciler, tmp_path / "reconciler.log", timeout_s=READY_TIMEOUT_S)
            for url, proc, log in urls:
                wait_http_ok(f"{url}/readyz", proc, log, timeout_s=READY_TIMEOUT_S)
            yield Stack(f"http://127.0.0.1:{api_port}", processors, logs, tmp_path / "reconciler.log", provider)
        finally:
            for proc in started:
                with suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                stop_process(proc)


@pytest.fixture
def default_stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(settings, tmp_path, {})


@pytest.fixture
def short_stale_stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(settings, tmp_path, SHORT_STALE)


def _upload(settings: Settings, stack: Stack) -> str:
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
    with httpx.Client(base_url=stack.api, headers=headers, timeout=60) as client:
        kb = client.post("/v1/knowledge-bases", json={"name": f"rescue-{uuid.uuid4().hex[:6]}"}).json()["id"]
        response = client.post(
            f"/v1/knowledge-bases/{kb}/documents", files={"file": ("tides.txt", TEXT.encode(), "text/plain")}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _victim_mid_embedding(db: Database, stack: Stack, doc: str) -> tuple[int, str]:
    """Hold embedding, upload, and wait until one processor is stuck in it: (its pid, its processor id)."""

    async def embedding() -> dict[str, object] | None:
        row = await fetch_one(db, "SELECT status, stage, lease_owner FROM documents WHERE id = :id", id=doc)
        return row if row["stage"] == "embedding" else None

    row = await eventually(embedding, timeout_s=120)
    owner = str(row["lease_owner"])
    pid = int(owner.split(":")[1])  # a processor id is host:pid:suffix
    assert pid in stack.processors, (owner, list(stack.processors))
    return pid, owner


async def _attempts(db: Database, doc: str) -> list[dict[str, object]]:
    return await fetch(
        db,
        "SELECT lease_owner, outcome, error FROM document_attempts WHERE document_id = :id ORDER BY attempt",
        id=doc,
    )


async def _ready(db: Database, doc: str) -> dict[str, object]:
    async def ready() -> dict[str, object] | None:
        row = await fetch_one(db, "SELECT status, attempts, error FROM documents WHERE id = :id", id=doc)
        assert row["status"] != "failed", row
        return row if row["status"] == "ready" else None

    return await eventually(ready, timeout_s=180)


async def test_kill_9_mid_document_is_rescued_at_once_and_finished_by_the_other_processor(
    settings: Settings, db: Database, default_stack: Stack
) -> None:
    stack = default_stack

    # Within STALE_AFTER_S of a Postgres start the fast path holds back; the session's server may be young.
    async def postgres_past_grace() -> bool:
        row = await fetch_one(db, "SELECT now() - pg_postmaster_start_time() > interval '30 seconds' AS old")
        return bool(row["old"])

    await eventually(postgres_past_grace, timeout_s=120, every_s=1.0)
    stack.provider.delay_s = HOLD_EMBEDDING_S
    doc = _upload(settings, stack)
    victim, owner = await _victim_mid_embedding(db, stack, doc)
    stack.provider.delay_s = 0.0

    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    stack.processors[victim].wait(timeout=30)

    async def taken_back() -> bool:
        row = await fetch_one(db, "SELECT status, lease_owner FROM documents WHERE id = :id", id=doc)
        return row["lease_owner"] != owner

    await eventually(taken_back, timeout_s=60, every_s=0.05)
    rescued_in = time.monotonic() - killed_at
    assert rescued_in < FAST_RESCUE_DEADLINE_S, rescued_in

    final = await _ready(db, doc)
    assert final["attempts"] == 2 and final["error"] is None, final
    first, second = await _attempts(db, doc)
    assert first["lease_owner"] == owner and first["outcome"] == "stalled", first
    assert "database session ended" in first["error"]["message"], first  # type: ignore[index]
    assert second["lease_owner"] != owner and second["outcome"] == "ready", second
    log = stack.reconciler_log.read_text()
    assert "document.rescued" in log and "presence_lost" in log, log[-3000:]


async def test_sigstop_is_left_to_the_stale_path_and_the_woken_zombie_writes_nothing(
    settings: Settings, db: Database, short_stale_stack: Stack
) -> None:
    stack = short_stale_stack
    stack.provider.delay_s = HOLD_EMBEDDING_S
    doc = _upload(settings, stack)
    victim, owner = await _victim_mid_embedding(db, stack, doc)
    stack.provider.delay_s = 0.0

    os.kill(victim, signal.SIGSTOP)
    try:
        final = await _ready(db, doc)
        first, second = await _attempts(db, doc)
        # Stopped, not dead: its session and lock live on, so only the stale heartbeat gave it away.
        assert first["lease_owner"] == owner and first["outcome"] == "stalled", first
        assert first["error"]["message"].startswith("no heartbeat for more than"), first  # type: ignore[index]
        assert second["lease_owner"] != owner and second["outcome"] == "ready", second
        assert final["attempts"] == 2, final
        snapshot = await fetch_one(
            db, "SELECT status, version, lease_epoch, updated_at, chunk_count FROM documents WHERE id = :id", id=doc
        )
        events = await fetch(db, "SELECT id FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc)
    finally:
        os.kill(victim, signal.SIGCONT)

    victim_log = stack.logs[victim]

    async def zombie_found_out() -> bool:
        text = victim_log.read_text()
        return "lease.lost" in text or "document.lease_lost" in text

    await eventually(zombie_found_out, timeout_s=60)
    assert stack.processors[victim].poll() is None, "the woken processor keeps running"
    after = await fetch_one(
        db, "SELECT status, version, lease_epoch, updated_at, chunk_count FROM documents WHERE id = :id", id=doc
    )
    assert after == snapshot
    assert await fetch(db, "SELECT id FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc) == events
    assert await _attempts(db, doc) == [first, second]
