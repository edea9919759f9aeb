"""Nothing holds a slot and a lease forever: a heartbeat that errors, a stage that hangs (issue 12, section 3)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.processor.chunking import Chunk, chunk_elements
from services.processor.extraction.elements import Element
from shared.lifecycle import Lease
from shared.settings import Settings
from shared.vectorstore import QdrantVectorStore
from tests.integration.processor_service.conftest import GatedExtractor
from tests.support.api_helpers import create_kb, fetch_all, upload
from tests.support.processor_harness import processor_client, until_idle, wait_for

TEXT = b"Tide tables give the height of the water at each hour of the day.\n"
HANG_MARKER = "HANG-THE-CHUNKER"


async def plain_text(path: str, media_type: str) -> list[Element]:
    with open(path, encoding="utf-8") as handle:
        return [Element(text=handle.read(), kind="NarrativeText", page=None, heading=None)]


async def refused_heartbeat(conn: AsyncConnection, lease: Lease) -> bool:
    """Fake lifecycle.heartbeat: the fenced UPDATE fails with an error that is not about the connection."""
    raise ProgrammingError(
        "UPDATE documents SET heartbeat_at = now() WHERE ...", {}, Exception("permission denied for table documents")
    )


async def _metric(client: httpx.AsyncClient, line_start: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_heartbeat_error_is_logged_and_stops_the_attempt_which_is_retried(
    api: httpx.AsyncClient,
    fast_settings: Settings,
    vectors: QdrantVectorStore,
    gated: GatedExtractor,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("services.processor.heartbeat.heartbeat", refused_heartbeat)
    kb = await create_kb(api)
    doc_id = (await upload(api, kb, "tides.txt", TEXT)).json()["id"]
    async with processor_client(fast_settings, extractor=gated, vectors=vectors) as (client, state):
        doc = await wait_for(fast_settings, doc_id, {"failed", "ready"}, client=client, timeout_s=60)
        await until_idle(state)
        failures = await _metric(client, 'kbingest_processor_heartbeat_failures_total{kind="error"}')
    # Retried, then failed for good; never left running without a renewed lease.
    tries = doc["max_attempts"]
    assert doc["status"] == "failed" and doc["attempts"] == tries
    assert doc["error"]["code"] == "max_attempts_exceeded" and doc["error"]["cause"]["code"] == "internal_error"
    attempts = await fetch_all(
        fast_settings,
        "SELECT outcome, stage, error FROM document_attempts WHERE document_id = :id ORDER BY id",
        id=doc_id,
    )
    assert [a["outcome"] for a in attempts] == ["retry_scheduled"] * (tries - 1) + ["failed"]
    for attempt in attempts:
        assert attempt["error"]["code"] == "internal_error"
        assert "heartbeat failed" in attempt["error"]["message"]
        assert "permission denied" in attempt["error"]["message"]
    assert failures == tries
    logged = [line for line in capfd.readouterr().out.splitlines() if "heartbeat.error" in line]
    assert len(logged) == tries and all(doc_id in line and "error" in line for line in logged), logged


@pytest.fixture
def hanging_chunker(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Fake chunker that never returns for a text carrying HANG_MARKER (until the test ends)."""
    release = threading.Event()

    def chunk_or_hang(elements: list[Element], **kwargs: Any) -> list[Chunk]:
        if any(HANG_MARKER in e.text for e in elements):
            release.wait()
        return chunk_elements(elements, **kwargs)

    monkeypatch.setattr("services.processor.stages.chunk_elements", chunk_or_hang)
    yield release
    release.set()


async def test_a_hung_chunker_is_cut_by_the_watchdog_and_its_slot_serves_the_next_document(
    api: httpx.AsyncClient, fast_settings: Settings, vectors: QdrantVectorStore, hanging_chunker: threading.Event
) -> None:
    # One slot: the second document can only run once the hung attempts let go of it. The ceiling is
    # far above what download and extraction of a line of text take, even on a busy machine.
    settings = fast_settings.model_copy(update={"processor_concurrency": 1, "attempt_timeout_s": 5.0})
    kb = await create_kb(api)
    hung = (await upload(api, kb, "hung.txt", f"{HANG_MARKER}\n".encode() + TEXT)).json()["id"]
    fine = (await upload(api, kb, "fine.txt", TEXT)).json()["id"]
    async with processor_client(settings, extractor=plain_text, vectors=vectors) as (client, state):
        doc = await wait_for(settings, hung, {"failed", "ready"}, client=client)
        other = await wait_for(settings, fine, {"failed", "ready"}, client=client)
        await until_idle(state)
        cut = await _metric(client, 'kbingest_processor_attempt_timeouts_total{stage="chunking"}')
    assert other["status"] == "ready", other["error"]
    tries = doc["max_attempts"]
    assert doc["status"] == "failed" and doc["attempts"] == tries
    assert doc["error"]["code"] == "max_attempts_exceeded" and doc["error"]["cause"]["code"] == "stage_timeout"
    assert doc["lease_owner"] is None
    attempts = await fetch_all(
        settings, "SELECT outcome, stage, error FROM document_attempts WHERE document_id = :id ORDER BY id", id=hung
    )
    assert [a["outcome"] for a in attempts] == ["retry_scheduled"] * (tries - 1) + ["failed"]
    for attempt in attempts:
        assert attempt["stage"] == "chunking" and attempt["error"]["code"] == "stage_timeout"
        assert "ATTEMPT_TIMEOUT_S (5s)" in attempt["error"]["message"]
    assert cut == tries
