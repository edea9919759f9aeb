"""Failures (503 + Retry-After, timeouts) are retried with backoff and end in dead letters;
a 429 (busy) is back-pressure: never an attempt, never a dead letter, re-offered within ~1 s."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from services.relay.backoff import BUSY_JITTER_S, BUSY_RETRY_MAX_S
from services.relay.build import open_relay
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
    query,
    relay_settings,
)

# Seconds until a row is due again, read in the database's own clock.
DUE_IN_S = "SELECT extract(epoch FROM available_at - now())::float8 AS due_in_s FROM outbox"


def _gaps(deliveries: list[dict[str, Any]]) -> list[float]:
    times = [d["received_at"] for d in deliveries]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_503_is_retried_with_backoff_then_delivered(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=503, count=2)
    m = await deliver_all(relay_config)
    (row,) = await query(relay_config.database_url, "SELECT attempts, errors, last_error, delivered_at FROM outbox")
    errors = json.loads(row["errors"])
    assert row["attempts"] == 3 and row["delivered_at"] is not None and row["last_error"].startswith("HTTP 503")
    assert [e["status"] for e in errors] == [503, 503] and [e["attempt"] for e in errors] == [1, 2]
    deliveries = await subscriber.deliveries()
    assert [d["status"] for d in deliveries] == [503, 503, 200]
    # A retry never comes before the delay it was given (same host clock for relay, DB and subscriber).
    for gap, error in zip(_gaps(deliveries), errors, strict=True):
        assert error["retry_in_s"] > 0 and gap >= error["retry_in_s"] - 0.01, (gap, error)
    assert m.retries._value.get() == 2


async def test_503_honours_retry_after(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=503, count=1, retry_after="2")
    await deliver_all(relay_config)
    (row,) = await query(relay_config.database_url, "SELECT errors FROM outbox")
    (error,) = json.loads(row["errors"])
    # The backoff base is 0.05 s here: only Retry-After explains a 2 s delay.
    assert error["status"] == 503 and error["retry_in_s"] == 2.0
    (gap,) = _gaps(await subscriber.deliveries())
    assert gap >= 1.99


async def test_busy_far_beyond_max_attempts_is_never_an_attempt(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    busy = 25
    # A backoff this long would show at once: the 2nd failure alone waits >= 1 s, the 8th >= 32 s.
    settings = relay_config.model_copy(
        update={"relay_max_attempts": 3, "relay_backoff_base_s": 1.0, "relay_backoff_max_s": 60.0}
    )
    await fill(settings.database_url, count=1, aggregates=1)
    await subscriber.control(status=429, count=busy)
    m = metrics()
    started = time.monotonic()
    async with open_relay(settings, m) as relay:
        await relay.run_once()
        (row,) = await query(
            settings.database_url, f"SELECT attempts, errors, last_error, ({DUE_IN_S}) AS due_in_s FROM outbox"
        )
        assert (row["attempts"], json.loads(row["errors"]), row["last_error"]) == (0, [], None)
        assert row["due_in_s"] <= BUSY_RETRY_MAX_S + BUSY_JITTER_S, "re-offered within ~1 s, not backed off"
        await drain(relay, settings.database_url, timeout_s=180)
    elapsed = time.monotonic() - started
    (row,) = await query(
        settings.database_url, "SELECT attempts, errors, last_error, delivered_at, dead_at FROM outbox"
    )
    assert row["delivered_at"] is not None and row["dead_at"] is None
    assert (row["attempts"], json.loads(row["errors"]), row["last_error"]) == (1, [], None), "only the 2xx counts"
    assert [d["status"] for d in await subscriber.deliveries()] == [429] * busy + [200]
    assert m.busy.labels(subscriber.url)._value.get() == busy
    assert m.retries._value.get() == 0 and m.dead_letters._value.get() == 0
    # Exponential backoff from 1 s would need minutes for this many answers; re-offers take ~0.35 s each.
    assert elapsed < busy * (BUSY_RETRY_MAX_S + BUSY_JITTER_S) + 60, elapsed


async def test_429_retry_after_is_capped_at_about_a_second(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=429, count=1, retry_after="120")
    async with open_relay(relay_config, metrics()) as relay:
        await relay.run_once()
        (row,) = await query(relay_config.database_url, DUE_IN_S)
        assert row["due_in_s"] <= BUSY_RETRY_MAX_S + BUSY_JITTER_S
        # Were the 120 s honoured, this deadline would pass first.
        await drain(relay, relay_config.database_url, timeout_s=60)
    (row,) = await query(relay_config.database_url, "SELECT attempts, errors FROM outbox")
    assert (row["attempts"], json.loads(row["errors"])) == (1, [])


async def test_busy_answers_do_not_spend_the_budget_of_real_failures(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    settings = relay_config.model_copy(update={"relay_max_attempts": 3})
    await fill(settings.database_url, count=1, aggregates=1)
    await subscriber.control(status=429, count=-1)
    m = metrics()
    async with open_relay(settings, m) as relay:

        async def busy_enough() -> bool:
            await relay.run_once()
            return int((await subscriber.stats())["requests"]) >= 10

        # run_once is the only thing sending: nothing is in flight once this returns.
        await eventually(busy_enough, timeout_s=120, every_s=0.05, what="ten 429 answers")
        await subscriber.control(status=503, count=-1)

        async def dead() -> bool:
            await relay.run_once()
            rows = await query(settings.database_url, "SELECT dead_at FROM outbox")
            return rows[0]["dead_at"] is not None

        await eventually(dead, timeout_s=120, every_s=0.05, what="the dead letter")
    (row,) = await query(settings.database_url, "SELECT attempts, dead_reason, errors FROM outbox")
    errors = json.loads(row["errors"])
    assert (row["attempts"], row["dead_reason"]) == (3, "max_attempts")
    assert [(e["attempt"], e["status"]) for e in errors] == [(1, 503), (2, 503), (3, 503)], "no 429 in the history"
    assert m.busy.labels(subscriber.url)._value.get() >= 10 and m.retries._value.get() == 2


async def test_multi_route_busy_subscriber_does_not_hold_back_or_repeat_the_other(
    database_url: str,
    subscriber: SubscriberProcess,
    other_subscriber: SubscriberProcess,
) -> None:
    busy = 15
    settings = relay_settings(
        database_url, {"document.*": [subscriber.url, other_subscriber.url]}, relay_max_attempts=3
    )
    await fill(database_url, count=1, aggregates=1)
    await other_subscriber.control(status=429, count=busy)
    m = metrics()
    async with open_relay(settings, m) as relay:
        await relay.run_once()
        assert [d["status"] for d in await subscriber.deliveries()] == [200], "delivered while the other is busy"
        await drain(relay, database_url, timeout_s=120)
    rows = await query(
        database_url,
        "SELECT subscriber, attempts, errors, delivered_at IS NOT NULL AS delivered, dead_at FROM outbox_deliveries",
    )
    by_url = {r["subscriber"]: r for r in rows}
    for url in (subscriber.url, other_subscriber.url):
        row = by_url[url]
        assert (row["delivered"], row["dead_at"], row["attempts"], json.loads(row["errors"])) == (True, None, 1, [])
    (event,) = await query(database_url, "SELECT attempts, errors, delivered_at, dead_at FROM outbox")
    assert event["delivered_at"] is not None and event["dead_at"] is None and event["attempts"] == 1
    assert json.loads(event["errors"]) == []
    assert len(await subscriber.deliveries()) == 1, "the busy one's re-offers never repeat the other's delivery"
    assert [d["status"] for d in await other_subscriber.deliveries()] == [429] * busy + [200]
    assert m.busy.labels(other_subscriber.url)._value.get() == busy and m.retries._value.get() == 0


async def test_batch_subscriber_busy_per_event_is_not_an_attempt(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    settings = batch_relay_settings(database_url, subscriber.batch_url, relay_max_attempts=2)
    await fill(database_url, count=20, aggregates=20)
    await subscriber.control(status=429, count=30)
    await deliver_all(settings)
    rows = await query(database_url, "SELECT attempts, errors, dead_at FROM outbox")
    assert all((r["attempts"], json.loads(r["errors"]), r["dead_at"]) == (1, [], None) for r in rows)
    report = analyse(await subscriber.deliveries())
    assert (report.unique, report.duplicates) == (20, 0)


async def test_timeout_is_retried(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    settings = relay_config.model_copy(update={"relay_timeout_s": 0.3, "relay_connect_timeout_s": 0.3})
    await fill(settings.database_url, count=1, aggregates=1)
    await subscriber.control(delay_s=2.0)
    async with open_relay(settings, metrics()) as relay:
        await relay.run_once()
        (row,) = await query(settings.database_url, "SELECT attempts, last_error, delivered_at FROM outbox")
        assert row["attempts"] >= 1 and row["delivered_at"] is None and "timeout" in row["last_error"]
        await subscriber.control(delay_s=0)
        await drain(relay, settings.database_url)


async def test_max_attempts_dead_letter_and_successor_proceeds(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    settings = relay_config.model_copy(update={"relay_max_attempts": 3})
    await fill(settings.database_url, count=2, aggregates=1)
    await subscriber.control(status=503, count=3)
    m = await deliver_all(settings)
    first, second = await query(
        settings.database_url, "SELECT attempts, dead_reason, dead_at, delivered_at, errors FROM outbox ORDER BY seq"
    )
    assert (first["attempts"], first["dead_reason"], first["delivered_at"]) == (3, "max_attempts", None)
    assert first["errors"].count("HTTP 503") == 3
    assert second["delivered_at"] is not None, "a dead event no longer blocks its aggregate"
    assert m.dead_letters._value.get() == 1
    assert analyse(await subscriber.deliveries()).order_violations == []


async def test_4xx_is_dead_at_once(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=400, count=1)
    async with open_relay(relay_config, metrics()) as relay:
        await relay.run_once()
    (row,) = await query(relay_config.database_url, "SELECT attempts, dead_reason, last_error FROM outbox")
    assert (row["attempts"], row["dead_reason"]) == (1, "rejected")
    assert row["last_error"].startswith("HTTP 400")
