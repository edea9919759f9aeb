"""A relay with nothing else to do wakes for the events it put back itself, not at its next poll."""

from __future__ import annotations

import asyncio

import pytest

from services.relay.build import open_relay
from shared.settings import Settings
from tests.support.poll import eventually
from tests.support.relay_helpers import SubscriberProcess, delivered_at_least, fill, metrics, query

# Far longer than the test's deadline: a delivery that waited for a poll would miss it.
POLL_INTERVAL_S = 120.0


@pytest.mark.parametrize(("status", "answers"), [(429, 5), (503, 2)], ids=["busy", "retry"])
async def test_put_back_events_are_re_claimed_when_due_not_at_the_next_poll(
    relay_config: Settings, subscriber: SubscriberProcess, status: int, answers: int
) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    # Retry-After: 0 keeps busy re-offers at their floor; the test backoff keeps retries under 0.2 s.
    await subscriber.control(status=status, count=answers, retry_after="0" if status == 429 else None)
    async with open_relay(relay_config, metrics(), poll_interval_s=POLL_INTERVAL_S) as relay:
        task = asyncio.create_task(relay.run())
        try:
            # The LISTEN connection's catch-up wake-up may bring back one of them; only the due
            # times can bring back all of them before half a poll interval has passed.
            await eventually(
                lambda: delivered_at_least(subscriber, answers + 1),
                timeout_s=POLL_INTERVAL_S / 2,
                every_s=0.1,
                what="every re-offer and the delivery, without a poll",
            )
        finally:
            relay.stop()
            await task
    assert [d["status"] for d in await subscriber.deliveries()] == [status] * answers + [200]
    (row,) = await query(relay_config.database_url, "SELECT attempts, delivered_at FROM outbox")
    assert row["delivered_at"] is not None
    assert row["attempts"] == (1 if status == 429 else answers + 1)
