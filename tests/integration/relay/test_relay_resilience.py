"""Postgres restarts under a running relay; /readyz tells; the claim query keeps its index plan.

The chaos version (``make chaos``, a minute or two): one relay process delivers a backlog through repeated
Postgres restarts, crashes and killed sessions.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from services.relay.app import create_app
from services.relay.sql import ACK, CLAIM, SETTLE
from shared.settings import Settings
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

EVENTS = 3000
CHAOS_EVENTS = 10_000
# "fast": a clean restart (sessions get FATAL 57P01); "immediate": a crash (no goodbye, WAL recovery);
# "terminate": pg_terminate_backend of every relay session, the server stays up.
FAULTS = ("fast", "terminate", "immediate", "terminate", "fast", "immediate")


async def _readyz(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/readyz")


@pytest.fixture
async def relay_app(
    own_pg: servers.EmbeddedPostgres, subscriber: SubscriberProcess
) -> AsyncIterator[httpx.AsyncClient]:
    settings = relay_settings(own_pg.dsn, {"document.*": [subscriber.url]}, relay_claim_batch=100)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay", timeout=30) as client:
            yield client


async def test_relay_survives_a_postgres_restart(
    own_pg: servers.EmbeddedPostgres, subscriber: SubscriberProcess, relay_app: httpx.AsyncClient
) -> None:
    url = own_pg.dsn
    await eventually(lambda: _status(relay_app, 200), timeout_s=30, what="readyz 200")
    # Slow the subscriber so the restart lands mid-drain.
    await subscriber.control(delay_s=0.002)
    await fill(url, count=EVENTS, aggregates=300)
    await eventually(lambda: delivered_at_least(subscriber, 300), timeout_s=60, what="the drain to start")

    await asyncio.to_thread(own_pg.stop)
    down = await _wait_for_503(relay_app)
    assert "listen" in down["failed"], down
    await asyncio.sleep(1.0)
    await asyncio.to_thread(own_pg.start)

    await eventually(lambda: _status(relay_app, 200), timeout_s=60, what="readyz back to 200")
    await _every_event_delivered_in_order(subscriber, url, events=EVENTS, faults=1, claim_batch=100, timeout_s=120)
    metrics = (await relay_app.get("/metrics")).text
    assert "kbingest_outbox_delivered_total" in metrics


@pytest.mark.chaos
async def test_relay_process_rides_out_restarts_crashes_and_killed_sessions(
    own_pg: servers.EmbeddedPostgres, subscriber: SubscriberProcess
) -> None:
    url = own_pg.dsn
    settings = relay_settings(url, {"document.*": [subscriber.url]}, relay_port=free_port(), relay_claim_batch=100)
    await fill(url, count=CHAOS_EVENTS, aggregates=500)
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
        await _every_event_delivered_in_order(
            subscriber, url, events=CHAOS_EVENTS, faults=len(FAULTS), claim_batch=100, timeout_s=300
        )
        await eventually(lambda: relay_ready(settings.relay_port), timeout_s=60, what="readyz 200 again")
        assert proc.poll() is None, "the relay exited"


async def _every_event_delivered_in_order(
    subscriber: SubscriberProcess, url: str, *, events: int, faults: int, claim_batch: int, timeout_s: float
) -> None:
    """Full speed again, the outbox drains: each event reached the subscriber, in order per aggregate."""
    await subscriber.control(delay_s=0)
    await eventually(lambda: drained(url), timeout_s=timeout_s, what="every event delivered")
    report = analyse(await subscriber.deliveries())
    assert report.unique == events
    assert report.order_violations == []
    # At-least-once: a delivery whose ack was cut by a fault (or lost in a crash) is sent again, never lost;
    # the redeliveries are bounded by what was in flight (two claims) at each fault.
    assert report.duplicates <= faults * 2 * claim_batch, report.duplicates


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


async def _status(client: httpx.AsyncClient, expected: int) -> bool:
    return (await _readyz(client)).status_code == expected


async def _wait_for_503(client: httpx.AsyncClient) -> dict[str, object]:
    body: dict[str, object] = {}

    async def unavailable() -> bool:
        nonlocal body
        response = await _readyz(client)
        body = response.json()
        return response.status_code == 503

    await eventually(unavailable, timeout_s=30, every_s=0.05, what="readyz 503")
    return body


async def test_claim_uses_the_pending_indexes(database_url: str) -> None:
    await fill(database_url, count=2000, aggregates=100)
    conn = await connect(database_url)
    try:
        for analysed in (False, True):
            if analysed:
                await conn.execute("ANALYZE outbox")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + CLAIM, "relay", 500, 60.0))
            assert "Index Scan using ix_outbox_pending on outbox o" in plan, plan
            assert "ix_outbox_pending_aggregate" in plan, plan
            assert "Seq Scan" not in plan, plan
        # Acks and settles reach their rows by primary key, whatever the table's statistics say.
        seqs = [r["seq"] for r in await conn.fetch(CLAIM, "relay", 500, 60.0)]
        await conn.execute("ANALYZE outbox")
        for statement, args in (
            (ACK, ("relay", seqs)),
            (SETTLE, ("relay", seqs, ["retry"] * 500, [1] * 500, [1.0] * 500, [None] * 500, [None] * 500)),
        ):
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + statement, *args))
            assert "pk_outbox" in plan and "Seq Scan on outbox" not in plan, plan
    finally:
        await conn.close()


async def test_metrics_and_health_endpoints(relay_config: Settings) -> None:
    app = create_app(relay_config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            await eventually(lambda: _status(client, 200), timeout_s=30, what="readyz 200")
            text = (await client.get("/metrics")).text
    for name in (
        "kbingest_outbox_pending ",
        "kbingest_outbox_oldest_pending_age_seconds ",
        "kbingest_outbox_delivered_total",
        "kbingest_outbox_delivery_latency_seconds_bucket",
        "kbingest_outbox_retries_total ",
        "kbingest_outbox_dead_letters ",
        "kbingest_outbox_unroutable ",
        "kbingest_db_connections_in_use ",
        "kbingest_db_max_connections 4.0",
    ):
        assert name in text, name
