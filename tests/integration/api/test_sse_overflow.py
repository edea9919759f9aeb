"""A slow SSE client is cut off with a final ``overflow`` event instead of buffering without bound."""

from __future__ import annotations

import asyncio
import json
import uuid

from services.api.broadcast import QUEUE_MAX, Broadcaster
from services.api.routes.event_stream import Stream
from shared import state_notices
from shared.db import Database
from shared.events import STATE_CHANNEL
from shared.settings import Settings
from shared.state_notices import DocumentNotice
from tests.support.poll import eventually


def _notice(kb: str, n: int) -> str:
    notice = DocumentNotice(
        event_id=str(uuid.uuid4()),
        type="document.stage_changed",
        document_id=str(n),
        knowledge_base_id=kb,
        status="processing",
        stage="extracting",
        version=1,
        updated_at=None,
    )
    return state_notices.to_json(notice)


async def test_slow_client_gets_a_final_overflow_event(settings: Settings, db: Database) -> None:
    broadcaster = Broadcaster(settings.database_url)  # not started: notifications are fed by hand
    kb = str(uuid.uuid4())
    # The key re-check (revocation) is not what this test is about: an hour never comes.
    stream = Stream(db, broadcaster, kb, key_id=uuid.uuid4(), key_recheck_s=3600.0).events(None)
    first = asyncio.ensure_future(anext(stream))

    async def subscribed() -> bool:
        return broadcaster.subscriber_count == 1

    await eventually(subscribed, timeout_s=10, every_s=0.01)
    broadcaster._notified(None, 0, STATE_CHANNEL, _notice(kb, 0))
    assert (await first).event == "document"
    # Then the client reads nothing while more than its queue holds arrives.
    for n in range(1, QUEUE_MAX + 5):
        broadcaster._notified(None, 0, STATE_CHANNEL, _notice(kb, n))
    broadcaster._notified(None, 0, STATE_CHANNEL, _notice(str(uuid.uuid4()), -1))  # other KB: not queued here

    final = await anext(stream)
    assert final.event == "overflow" and json.loads(final.data)["reason"] == "slow_consumer"
    assert json.loads(final.data)["last_event_id"] is not None
    assert [e async for e in stream] == []
    assert broadcaster.subscriber_count == 0
