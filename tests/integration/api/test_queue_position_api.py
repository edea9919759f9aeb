"""``queue_position`` and ``eta_s`` on the Document: integers while queued, null once started, in every read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from shared import lifecycle
from shared.db import Database, worker_database
from shared.errors import DocumentError, ErrorCode
from shared.queue_position import RATE_WINDOW_S
from shared.settings import Settings
from tests.support.api_helpers import create_kb, upload


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = worker_database(settings.database_url, service="test", max_connections=2)
    yield database
    await database.dispose()


async def _claim_next(db: Database) -> lifecycle.Lease:
    async with db.transaction() as conn:
        lease = await lifecycle.claim_next(conn, owner="test")
    assert lease is not None
    return lease


async def _positions(api: httpx.AsyncClient, kb: str) -> dict[str, tuple[int | None, float | None]]:
    page = (await api.get(f"/v1/knowledge-bases/{kb}/documents")).json()
    return {d["id"]: (d["queue_position"], d["eta_s"]) for d in page["items"]}


async def test_queued_documents_carry_position_and_eta_until_they_start(api: httpx.AsyncClient, db: Database) -> None:
    backlog, other = await create_kb(api), await create_kb(api)
    uploads = []
    for i in range(3):
        uploads.append((await upload(api, backlog, f"backlog-{i}.txt", f"backlog {i}".encode())).json())
    uploads.append((await upload(api, other, "single.txt", b"one upload to another KB")).json())
    urgent = (await upload(api, backlog, "urgent.txt", b"needed now", data={"priority": "high"})).json()
    # At upload time each one was last in line; nothing has started, no processor: no ETA.
    assert [(d["queue_position"], d["eta_s"]) for d in uploads] == [(0, None), (1, None), (2, None), (1, None)]
    assert (urgent["queue_position"], urgent["eta_s"]) == (0, None)

    # Priority first. Serving the urgent one serves its KB, so the other KB's single upload comes next.
    order = [urgent["id"], uploads[3]["id"], uploads[0]["id"], uploads[1]["id"], uploads[2]["id"]]
    got = {d: (await api.get(f"/v1/documents/{d}")).json()["queue_position"] for d in order}
    assert got == {d: n for n, d in enumerate(order)}
    listed = await _positions(api, backlog) | await _positions(api, other)
    assert {d: p for d, (p, _) in listed.items()} == got

    lease = await _claim_next(db)
    assert str(lease.document_id) == urgent["id"]
    started = (await api.get(f"/v1/documents/{urgent['id']}")).json()
    assert (started["status"], started["queue_position"], started["eta_s"]) == ("processing", None, None)
    # One start in the window: the ETA follows that rate.
    listed = await _positions(api, backlog) | await _positions(api, other)
    expected = {d: (n, round(n * RATE_WINDOW_S, 1)) for n, d in enumerate(order[1:])}
    assert listed == expected | {urgent["id"]: (None, None)}

    # A failed document retried by the user goes back in line, and the 202 says where.
    async with db.transaction() as conn:
        await lifecycle.fail_or_retry(
            conn, lease, DocumentError(ErrorCode.CORRUPT_FILE, "broken"), stage=None, retry_delay_s=0
        )
    failed = (await api.get(f"/v1/documents/{urgent['id']}")).json()
    assert (failed["status"], failed["queue_position"], failed["eta_s"]) == ("failed", None, None)
    retried = await api.post(f"/v1/documents/{urgent['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert (retried.json()["status"], retried.json()["queue_position"]) == ("queued", 0)


async def test_the_document_schema_documents_both_fields(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()["components"]["schemas"]
    document = schema.get("Document") or schema["Document-Output"]
    position, eta = document["properties"]["queue_position"], document["properties"]["eta_s"]
    assert {t["type"] for t in position["anyOf"]} == {"integer", "null"}
    assert {t["type"] for t in eta["anyOf"]} == {"number", "null"}
    assert "queued" in position["description"] and "queued" in eta["description"]
    unknown = await api.get(f"/v1/documents/{uuid.uuid4()}")
    assert unknown.status_code == 404
