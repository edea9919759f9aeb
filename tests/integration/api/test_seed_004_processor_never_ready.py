"""Seed 004: the worker process was up ("health: starting") but its start-up hung, so it never processed a job.

A processor that registers and keeps heartbeating but never becomes ready raises ``processor_not_ready``
after its start-up deadline; the alert clears once it reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from shared.db import Database
from shared.settings import Settings
from tests.support.api_helpers import create_kb, upload
from tests.support.pipeline_helpers import alert_codes, execute, open_db, register_processor
from tests.support.poll import eventually

DEADLINE_S = 2.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"processor_ready_deadline_s": DEADLINE_S})


async def _hung_processor(db: Database, processor_id: str) -> None:
    """The process lives (its liveness loop beats) while start-up never finishes."""
    while True:
        await execute(db, "UPDATE processors SET last_seen = now() WHERE id = :id", id=processor_id)
        await asyncio.sleep(0.5)


async def test_seed_004_registered_processor_that_never_becomes_ready(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    db = open_db(settings)
    kb = await create_kb(api)
    await upload(api, kb, "job.md", b"# job_validated\n")
    processor = await register_processor(db, ready=False)
    beating = asyncio.create_task(_hung_processor(db, processor))
    try:
        codes = await alert_codes(api)
        assert "processor_not_ready" not in codes, "within its start-up deadline it is not an alert yet"
        assert "no_processor" not in codes, "it heartbeats, so it is not absent"

        async def raised() -> dict[str, object] | None:
            body = (await api.get("/v1/pipeline")).json()
            return next((a for a in body["alerts"] if a["code"] == "processor_not_ready"), None)

        alert = await eventually(raised, timeout_s=60)
        assert "/readyz" in str(alert["message"])
        body = (await api.get("/v1/pipeline")).json()
        assert body["processors"][0]["id"] == processor and body["processors"][0]["ready_at"] is None

        # The fix lands (start-up returns): the processor reports ready and the alert clears.
        await execute(db, "UPDATE processors SET ready_at = now() WHERE id = :id", id=processor)

        async def cleared() -> set[str] | None:
            codes = await alert_codes(api)
            return None if "processor_not_ready" in codes else codes | {"-"}

        await eventually(cleared, timeout_s=60)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await db.dispose()
