"""Several relays at once: every event delivered, per-aggregate order kept, no duplicates."""

from __future__ import annotations

import asyncio
import time

from services.relay.build import open_relay
from shared.settings import Settings
from tests.support.relay_helpers import SubscriberProcess, analyse, fill, metrics, pending

EVENTS = 10_000
AGGREGATES = 500
DEADLINE_S = 240.0


async def _drain(settings: Settings, name: str) -> int:
    async with open_relay(settings, metrics(), relay_id=name) as relay:
        total = 0
        deadline = time.monotonic() + DEADLINE_S
        # run_once returns when nothing is due for it; another replica may still unblock successors.
        while time.monotonic() < deadline and await pending(settings.database_url) > 0:
            total += await relay.run_once()
            await asyncio.sleep(0.01)
        return total


async def test_four_relays_keep_per_aggregate_order(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    await fill(relay_config.database_url, count=EVENTS, aggregates=AGGREGATES)
    # Two replicas post one event per request, two post batches: the order rule lives in the claim,
    # so it must hold whatever each replica's delivery mode (and the batch ones keep the test fast).
    single = relay_config.model_copy(update={"relay_claim_batch": 200})
    batched = single.model_copy(
        update={
            "relay_routes": {"document.*": [subscriber.batch_url]},
            "relay_batch_subscribers": [subscriber.batch_url],
        }
    )
    replicas = [single, single, batched, batched]
    settled = await asyncio.gather(*(_drain(s, f"relay-{i}") for i, s in enumerate(replicas)))
    settings = single
    assert await pending(settings.database_url) == 0
    report = analyse(await subscriber.deliveries())
    assert report.unique == EVENTS
    assert report.order_violations == []
    assert report.duplicates == 0, f"{report.duplicates} duplicate deliveries"
    assert sum(settled) == EVENTS
    assert sum(1 for n in settled if n > 0) >= 2, f"replicas shared the work: {settled}"
