"""Chaos: one relay process delivers a backlog through repeated Postgres restarts, crashes and killed sessions.

Runs in ``make chaos`` (a minute or two). The single-restart version runs in ``make test``
(test_relay_resilience.py).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support import servers
from tests.support.poll import eventually
from tests.support.relay_helpers import (
    SubscriberProcess,
    analyse,
    connect,
    delivered_at_least,
    drained,
    fill,
    relay_process,
    relay_ready,
    relay_settings,
)
from tests.support.servers import free_port

EVENTS = 10_000
# "fast": a clean restart (sessions get FATAL 57P01); "immediate": a crash (no goodbye, WAL recovery);
# "terminate": pg_terminate_backend of every relay session, the server stays up.
FAULTS = ("fast", "terminate", "immediate", "terminate", "fast", "immediate")


@pytest.mark.chaos
async def test_relay_process_rides_out_restarts_crashes_and_killed_sessions(
    own_pg: servers.EmbeddedPostgres, subscriber: SubscriberProcess
) -> None:
    url = own_pg.dsn
    settings = relay_settings(url, {"document.*": [subscriber.url]}, relay_port=free_port(), relay_claim_batch=100)
    await fill(url, count=EVENTS, aggregates=500)
    # Slow the subscriber so every fault lands mid-drain.
    await subscriber.control(delay_s=0.003)
    rng = random.Random(20261124)
    with relay_process(settings) as proc:
        await eventually(lambda: relay_ready(settings.relay_port), timeout_s=60, what="relay ready")
        for fault in FAULTS:
            seen = (await subscriber.stats())["total"]
            await eventually(
                lambda seen=seen: delivered_at_least(subscriber, seen + 300), timeout_s=120, what="progress"
            )
            if fault == "terminate":
                await _terminate_relay_sessions(url)
            else:
                await asyncio.to_thread(own_pg.stop, fault)
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                await asyncio.to_thread(own_pg.start)
            assert proc.poll() is None, f"the relay exited after a '{fault}' fault"
        await subscriber.control(delay_s=0)
        await eventually(lambda: drained(url), timeout_s=300, what="every event delivered")
        await eventually(lambda: relay_ready(settings.relay_port), timeout_s=60, what="readyz 200 again")
        assert proc.poll() is None, "the relay exited"
    report = analyse(await subscriber.deliveries())
    assert report.unique == EVENTS
    assert report.order_violations == []
    # At-least-once: acks cut by a fault (or lost in a crash) mean a redelivery, bounded by what was in flight.
    assert report.duplicates <= len(FAULTS) * 2 * settings.relay_claim_batch, report.duplicates


async def _terminate_relay_sessions(url: str) -> None:
    conn = await connect(url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE 'kbingest.relay%'"
        )
    finally:
        await conn.close()
    assert killed >= 1, "the relay held no session to kill (at least its LISTEN one)"
