"""Any-of groups with real subscriber processes: a dead replica never holds events back; all dead is a failure."""

from __future__ import annotations

import json

from services.relay.build import open_relay
from tests.support.relay_helpers import (
    SubscriberProcess,
    analyse,
    batch_relay_settings,
    deliver_all,
    drain,
    fill,
    metrics,
    query,
    relay_settings,
)
from tests.support.servers import free_port

EVENTS = "SELECT attempts, errors, delivered_at, dead_at, dead_reason FROM outbox ORDER BY seq"


def nobody_listening() -> str:
    """A URL whose connections are refused: a replica that is down."""
    return f"http://127.0.0.1:{free_port()}/v1/events"


async def test_a_replica_that_goes_down_holds_nothing_back(
    database_url: str, subscriber: SubscriberProcess, other_subscriber: SubscriberProcess
) -> None:
    group = f"{other_subscriber.url}|{subscriber.url}"
    settings = relay_settings(database_url, {"document.*": [group]}, relay_max_attempts=2)
    m = metrics()
    async with open_relay(settings, m) as relay:
        await fill(database_url, count=40, aggregates=10, start=0, namespace="g")
        await drain(relay, database_url)
        first, second = len(await other_subscriber.deliveries()), len(await subscriber.deliveries())
        assert first + second == 40 and first >= 10 and second >= 10, "both replicas take events in turn"

        await other_subscriber.close()
        await fill(database_url, count=60, aggregates=10, start=40, namespace="g")
        await drain(relay, database_url)
    assert len(await subscriber.deliveries()) == second + 60, "every later event went to the live replica"
    report = analyse(await subscriber.deliveries())
    assert (report.duplicates, report.order_violations) == (0, [])
    rows = await query(database_url, EVENTS)
    assert len(rows) == 100
    assert all((r["attempts"], json.loads(r["errors"]), r["dead_at"]) == (1, [], None) for r in rows)
    assert m.delivered.labels(group)._value.get() == 100
    assert m.retries._value.get() == 0 and m.dead_letters._value.get() == 0
    assert m.member_failures.labels(other_subscriber.url)._value.get() >= 1, "the dead replica shows in its own metric"


async def test_one_member_refusing_from_the_start_costs_no_attempt(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    group = f"{nobody_listening()}|{subscriber.url}"
    settings = relay_settings(database_url, {"document.*": [group]}, relay_max_attempts=1)
    await fill(database_url, count=200, aggregates=50)
    await deliver_all(settings)
    report = analyse(await subscriber.deliveries())
    assert (report.unique, report.duplicates, report.order_violations) == (200, 0, [])
    rows = await query(database_url, EVENTS)
    assert all((r["attempts"], r["delivered_at"] is not None, r["dead_at"]) == (1, True, None) for r in rows)


async def test_every_member_down_is_retried_then_dead_lettered(database_url: str) -> None:
    down = [nobody_listening(), nobody_listening()]
    group = "|".join(down)
    settings = relay_settings(database_url, {"document.*": [group]}, relay_max_attempts=3)
    await fill(database_url, count=2, aggregates=1)
    m = await deliver_all(settings)
    first, second = await query(database_url, EVENTS)
    for row in (first, second):
        assert (row["attempts"], row["dead_reason"], row["delivered_at"]) == (3, "max_attempts", None)
        errors = json.loads(row["errors"])
        assert [e["attempt"] for e in errors] == [1, 2, 3] and {e["subscriber"] for e in errors} == {group}
        assert all(e["error"].startswith("every member failed") and all(u in e["error"] for u in down) for e in errors)
    assert m.dead_letters._value.get() == 2 and m.retries._value.get() == 4


async def test_a_group_among_several_routes_keeps_its_state_under_its_name(
    database_url: str,
    subscriber: SubscriberProcess,
    other_subscriber: SubscriberProcess,
) -> None:
    group = f"{nobody_listening()}|{subscriber.url}"
    settings = relay_settings(database_url, {"document.*": [group, other_subscriber.url]})
    await fill(database_url, count=10, aggregates=5)
    await deliver_all(settings)
    rows = await query(
        database_url, "SELECT subscriber, attempts, delivered_at IS NOT NULL AS delivered FROM outbox_deliveries"
    )
    assert {r["subscriber"] for r in rows} == {group, other_subscriber.url}
    assert all(r["delivered"] and r["attempts"] == 1 for r in rows) and len(rows) == 20
    assert len(await subscriber.deliveries()) == 10 and len(await other_subscriber.deliveries()) == 10


async def test_a_batch_group_gets_batches_from_the_live_member(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    group = f"{nobody_listening()}|{subscriber.batch_url}"
    settings = batch_relay_settings(database_url, group, relay_batch_max=50)
    await fill(database_url, count=300, aggregates=300)
    await deliver_all(settings)
    report = analyse(await subscriber.deliveries())
    assert (report.unique, report.duplicates) == (300, 0)
    assert (await subscriber.stats())["requests"] < 30, "batches, not one request per event"
    rows = await query(database_url, EVENTS)
    assert all((r["attempts"], r["dead_at"]) == (1, None) for r in rows)
