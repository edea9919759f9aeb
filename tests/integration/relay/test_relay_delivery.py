"""Delivery: signed, acknowledged, settled; fan-out to several subscribers; unroutable events parked."""

from __future__ import annotations

import asyncio
import uuid

from services.relay.build import open_relay
from shared.db import worker_database
from shared.outbox import add_event
from shared.settings import Settings
from tests.support.poll import eventually
from tests.support.relay_helpers import (
    SubscriberProcess,
    analyse,
    batch_relay_settings,
    deliver_all,
    drain,
    fill,
    metrics,
    pending,
    query,
    relay_settings,
    start_subscriber,
)


async def test_events_are_delivered_signed_and_settled(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    await fill(relay_config.database_url, count=50, aggregates=10)
    registry_metrics = metrics()
    async with open_relay(relay_config, registry_metrics) as relay:
        settled = await relay.run_once()
    assert settled == 50
    report = analyse(await subscriber.deliveries())
    assert (report.unique, report.duplicates, report.order_violations) == (50, 0, [])
    assert (await subscriber.stats())["rejected_signatures"] == 0
    rows = await query(relay_config.database_url, "SELECT delivered_at, claimed_by, attempts FROM outbox")
    assert all(r["delivered_at"] is not None and r["claimed_by"] is None and r["attempts"] == 1 for r in rows)
    assert registry_metrics.delivered.labels(subscriber.url)._value.get() == 50
    assert registry_metrics.pending._value.get() == 0


async def test_each_subscriber_has_its_own_delivery_state(
    database_url: str, subscriber: SubscriberProcess, other_subscriber: SubscriberProcess
) -> None:
    settings = relay_settings(
        database_url, {"document.*": [subscriber.url, other_subscriber.url]}, relay_max_attempts=10
    )
    await fill(database_url, count=2, aggregates=1)
    await other_subscriber.control(status=503, count=-1)
    async with open_relay(settings, metrics()) as relay:
        await relay.run_once()
        await other_subscriber.control(count=0)
        rows = await query(
            database_url,
            "SELECT d.subscriber, d.delivered_at IS NOT NULL AS delivered, d.attempts, o.delivered_at AS row_done "
            "FROM outbox_deliveries d JOIN outbox o ON o.seq = d.event_seq ORDER BY d.subscriber",
        )
        by_url = {r["subscriber"]: r for r in rows}
        assert by_url[subscriber.url]["delivered"] and not by_url[other_subscriber.url]["delivered"]
        assert all(r["row_done"] is None for r in rows), "the row waits for every subscriber"
        await drain(relay, database_url)
    first = analyse(await subscriber.deliveries())
    second = analyse(await other_subscriber.deliveries())
    assert (first.unique, first.duplicates, first.order_violations) == (2, 0, [])
    assert (second.unique, second.duplicates, second.order_violations) == (2, 0, [])

    # One subscriber refuses: the row is dead; a replay re-delivers only to that subscriber.
    await fill(database_url, count=1, aggregates=1)
    await other_subscriber.control(status=410, count=1)
    async with open_relay(settings, metrics()) as relay:
        await relay.run_once()
        (dead,) = await query(database_url, "SELECT id, dead_reason FROM outbox WHERE dead_at IS NOT NULL")
        assert dead["dead_reason"] == "rejected"
        db = worker_database(database_url, service="test", max_connections=1)
        async with db.transaction() as conn:
            from shared.deadletters import replay

            assert await replay(conn, dead["id"]) == "replayed"
        await db.dispose()
        await relay.run_once()
    assert await pending(database_url) == 0
    assert len(await subscriber.deliveries()) == 3, "the subscriber that already acked is not sent it again"
    assert len([d for d in await other_subscriber.deliveries() if d["status"] == 200]) == 3


async def test_batch_subscribers_get_arrays_with_per_event_acks(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    settings = batch_relay_settings(database_url, subscriber.batch_url, relay_batch_max=50)
    await fill(database_url, count=600, aggregates=300)
    await subscriber.control(status=503, count=7)
    await deliver_all(settings)
    report = analyse(await subscriber.deliveries())
    assert (report.unique, report.duplicates, report.order_violations) == (600, 0, [])
    stats = await subscriber.stats()
    assert stats["rejected_signatures"] == 0 and stats["requests"] < 60
    retried = await query(database_url, "SELECT count(*) AS n FROM outbox WHERE attempts = 2")
    assert retried[0]["n"] == 7


async def test_a_notify_wakes_the_relay_without_polling(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    db = worker_database(relay_config.database_url, service="test", max_connections=1)
    async with open_relay(relay_config, metrics(), poll_interval_s=60.0) as relay:
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: _true(relay.listener.connected), timeout_s=30, what="LISTEN")
            await asyncio.sleep(0.5)  # let the catch-up drain after connecting finish: only NOTIFY is left
            async with db.transaction() as conn:
                await add_event(conn, event_type="document.uploaded", aggregate_id=uuid.uuid4(), data={}, source="t")
            await eventually(lambda: _count(subscriber, 1), timeout_s=30, what="delivery after NOTIFY")

            # Kill the LISTEN backend: the listener reconnects by itself and NOTIFY works again.
            await query(
                relay_config.database_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'kbingest.relay.listen'",
            )
            await eventually(
                lambda: _true(relay.listener.reconnects >= 1 and relay.listener.connected),
                timeout_s=30,
                what="LISTEN reconnect",
            )
            await asyncio.sleep(0.5)
            async with db.transaction() as conn:
                await add_event(conn, event_type="document.uploaded", aggregate_id=uuid.uuid4(), data={}, source="t")
            await eventually(lambda: _count(subscriber, 2), timeout_s=30, what="delivery after reconnect")
        finally:
            relay.stop()
            await task
            await db.dispose()


async def _true(value: bool) -> bool:
    return value


async def _count(subscriber: SubscriberProcess, n: int) -> bool:
    return len(await subscriber.deliveries()) >= n


async def test_the_benchmark_subscriber_verifies_signatures_like_the_default_one(database_url: str) -> None:
    raw, forged = start_subscriber("--raw"), start_subscriber("--raw", secret="not-the-relay-secret")
    try:
        settings = relay_settings(database_url, {"document.uploaded": [raw.url], "document.deleted": [forged.url]})
        await fill(database_url, count=30, aggregates=10)
        await fill(database_url, count=3, aggregates=3, event_type="document.deleted")
        await raw.control(status=503, count=1, retry_after="1")
        await deliver_all(settings)
        report = analyse(await raw.deliveries())
        assert (report.unique, report.order_violations) == (30, [])
        assert (await raw.stats())["rejected_signatures"] == 0 and (await raw.stats())["unique"] == 30
        assert (await forged.stats())["rejected_signatures"] == 3
        dead = await query(database_url, "SELECT dead_reason, last_error FROM outbox WHERE dead_at IS NOT NULL")
        assert [r["dead_reason"] for r in dead] == ["rejected"] * 3 and "ForgedSignature" in dead[0]["last_error"]
    finally:
        await raw.close()
        await forged.close()
