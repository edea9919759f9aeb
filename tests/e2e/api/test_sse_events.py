"""GET /v1/knowledge-bases/{id}/events over real HTTP (uvicorn on a free port): order, resume, fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.routes import event_stream
from shared import lifecycle, vocabulary
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support import servers
from tests.support.pipeline_helpers import claim, create_document, create_kb, fetch
from tests.support.poll import eventually

pytestmark = pytest.mark.e2e

STAGES = vocabulary.STAGES


@dataclass
class Server:
    app: FastAPI
    base: str
    headers: dict[str, str]


@pytest.fixture
async def server(settings: Settings, api_key: str) -> AsyncIterator[Server]:
    app = create_app(settings)
    port = servers.free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(uv.serve())
    await eventually(lambda: _started(uv), timeout_s=30, every_s=0.05)
    yield Server(app, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {api_key}"})
    uv.should_exit = True
    await asyncio.wait_for(task, 30)


async def _started(uv: uvicorn.Server) -> bool:
    return bool(uv.started)


@dataclass
class Client:
    """An SSE client reading in the background: ``events`` (name, id, data) and ``comments``."""

    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    task: asyncio.Task[None] | None = None

    async def wait_for(self, n: int, timeout_s: float = 30) -> list[tuple[str, str | None, dict[str, Any]]]:
        async def enough() -> bool:
            return len(self.events) >= n

        await eventually(enough, timeout_s=timeout_s, every_s=0.05)
        return self.events

    async def close(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _read(client: Client, server: Server, kb: uuid.UUID, last_event_id: str | None) -> None:
    headers = dict(server.headers)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
        http.stream("GET", f"{server.base}/v1/knowledge-bases/{kb}/events", headers=headers) as response,
    ):
        client.status = response.status_code
        name, event_id, data = "message", None, ""
        async for line in response.aiter_lines():
            if line.startswith(":"):
                client.comments.append(line)
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                client.events.append((name, event_id, json.loads(data)))
                name, event_id, data = "message", None, ""


async def _connect(server: Server, kb: uuid.UUID, last_event_id: str | None = None) -> Client:
    client = Client()
    before = server.app.state.kb.broadcaster.subscriber_count
    client.task = asyncio.create_task(_read(client, server, kb, last_event_id))

    async def subscribed() -> bool:
        return server.app.state.kb.broadcaster.subscriber_count > before

    await eventually(subscribed, timeout_s=30, every_s=0.05)
    return client


async def _process(db: Database, doc: uuid.UUID, stages: tuple[vocabulary.Stage, ...] = STAGES) -> lifecycle.Lease:
    lease = await claim(db, doc)
    for stage in stages:
        async with db.transaction() as conn:
            assert await lifecycle.advance_stage(conn, lease, stage)
    return lease


async def _ready(db: Database, lease: lifecycle.Lease) -> None:
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, lease, chunk_count=3)


async def _outbox_ids(db: Database, doc: uuid.UUID) -> list[str]:
    return [str(r["id"]) for r in await fetch(db, "SELECT id FROM outbox WHERE aggregate_id = :d ORDER BY seq", d=doc)]


async def test_client_sees_every_transition_in_order(server: Server, db: Database, store: ObjectStore) -> None:
    kb, other_kb = await create_kb(db), await create_kb(db)
    client = await _connect(server, kb)
    doc = await create_document(db, store, kb)
    await create_document(db, store, other_kb)  # another KB's events never reach this stream
    await _ready(db, await _process(db, doc))

    events = await client.wait_for(7)
    await asyncio.sleep(0.3)
    assert client.status == 200 and len(client.events) == 7
    assert [(e[2]["type"], e[2]["status"], e[2]["stage"]) for e in events] == [
        ("document.uploaded", "queued", None),
        *[("document.stage_changed", "processing", stage) for stage in STAGES],
        ("document.indexed", "ready", None),
    ]
    assert {name for name, _, _ in events} == {"document"}
    assert [event_id for _, event_id, _ in events] == await _outbox_ids(db, doc)
    assert all(e[2]["document_id"] == str(doc) and e[2]["knowledge_base_id"] == str(kb) for e in events)
    # The lease's version (from the version sequence) marks every event of the attempt; none before it.
    leased = events[1][2]["version"]
    assert leased > 0 and [e[2]["version"] for e in events] == [0, *[leased] * 6]
    await client.close()


async def test_last_event_id_resume_replays_what_was_missed(server: Server, db: Database, store: ObjectStore) -> None:
    kb = await create_kb(db)
    first = await _connect(server, kb)
    doc = await create_document(db, store, kb)
    lease = await _process(db, doc, STAGES[:2])
    seen = await first.wait_for(3)
    await first.close()
    last_id = seen[-1][1]

    # While disconnected: three more transitions.
    for stage in STAGES[2:]:
        async with db.transaction() as conn:
            assert await lifecycle.advance_stage(conn, lease, stage)

    resumed = await _connect(server, kb, last_event_id=last_id)
    await _ready(db, lease)  # live again after the replay
    events = await resumed.wait_for(4)
    await asyncio.sleep(0.3)
    assert [(e[2]["type"], e[2]["stage"]) for e in resumed.events] == [
        *[("document.stage_changed", stage) for stage in STAGES[2:]],
        ("document.indexed", None),
    ]
    assert [e[1] for e in seen] + [e[1] for e in events] == await _outbox_ids(db, doc)
    await resumed.close()


async def test_unknown_last_event_id_asks_for_a_refetch(server: Server, db: Database, store: ObjectStore) -> None:
    kb = await create_kb(db)
    client = await _connect(server, kb, last_event_id=str(uuid.uuid4()))
    await create_document(db, store, kb)
    events = await client.wait_for(2)
    assert events[0][0] == "reset" and events[0][2]["reason"] == "unknown_last_event_id"
    assert events[1][2]["type"] == "document.uploaded"
    await client.close()


async def test_one_listen_connection_per_process_not_per_client(
    server: Server, db: Database, store: ObjectStore
) -> None:
    kb = await create_kb(db)
    clients = [await _connect(server, kb) for _ in range(5)]
    rows = await fetch(
        db,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'kbingest.api.listen' "
        "AND datname = current_database()",
    )
    assert rows[0]["n"] == 1
    await create_document(db, store, kb)
    for client in clients:
        assert (await client.wait_for(1))[0][2]["type"] == "document.uploaded"
    for client in clients:
        await client.close()

    async def all_gone() -> bool:
        return server.app.state.kb.broadcaster.subscriber_count == 0

    await eventually(all_gone, timeout_s=30)


async def test_heartbeat_comments_keep_an_idle_stream_open(
    server: Server, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_stream, "HEARTBEAT_S", 0.3)
    client = await _connect(server, await create_kb(db))

    async def pinged() -> bool:
        return len(client.comments) >= 2

    await eventually(pinged, timeout_s=30)
    assert client.comments[0].startswith(": ping")
    await client.close()


async def test_listen_connection_comes_back_and_missed_events_are_replayed(
    server: Server, db: Database, store: ObjectStore
) -> None:
    kb = await create_kb(db)
    client = await _connect(server, kb)
    doc = await create_document(db, store, kb)
    await client.wait_for(1)
    broadcaster = server.app.state.kb.broadcaster

    await fetch(
        db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'kbingest.api.listen' AND datname = current_database()",
    )
    lease = await _process(db, doc, STAGES[:1])  # may commit while nobody listens

    async def back() -> bool:
        return broadcaster.connected and broadcaster.reconnects >= 2

    await eventually(back, timeout_s=30)
    await _ready(db, lease)
    events = await client.wait_for(3)
    await asyncio.sleep(0.3)
    assert [e[2]["type"] for e in client.events] == ["document.uploaded", "document.stage_changed", "document.indexed"]
    assert [e[1] for e in events] == await _outbox_ids(db, doc)
    await client.close()


async def test_unknown_kb_is_404_and_a_key_is_required(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
        missing = await http.get(f"/v1/knowledge-bases/{uuid.uuid4()}/events", headers=server.headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        anonymous = await http.get(f"/v1/knowledge-bases/{uuid.uuid4()}/events")
        assert anonymous.status_code == 401
