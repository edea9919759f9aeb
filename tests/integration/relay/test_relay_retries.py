"""503 / 429 + Retry-After / timeouts are retried with backoff; budgets end in dead letters."""

from __future__ import annotations

import itertools
import json
from typing import Any

from services.relay.build import open_relay
from services.relay.worker import Relay
from shared.settings import Settings
from tests.support.relay_helpers import (
    SubscriberProcess,
    analyse,
    fill,
    metrics,
    pending,
    query,
    wait_until,
)


async def drain(relay: Relay, database_url: str, *, timeout_s: float = 60.0) -> None:
    """run_once until nothing is pending (retries become due after their backoff)."""

    async def done() -> bool:
        await relay.run_once()
        return await pending(database_url) == 0

    await wait_until(done, timeout_s=timeout_s, interval_s=0.05, what="the outbox to drain")


def _gaps(deliveries: list[dict[str, Any]]) -> list[float]:
    times = [d["received_at"] for d in deliveries]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_503_is_retried_with_backoff_then_delivered(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=503, count=2)
    m = metrics()
    async with open_relay(relay_config, m) as relay:
        await drain(relay, relay_config.database_url)
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


async def test_429_honours_retry_after(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    await fill(relay_config.database_url, count=1, aggregates=1)
    await subscriber.control(status=429, count=1, retry_after="2")
    async with open_relay(relay_config, metrics()) as relay:
        await drain(relay, relay_config.database_url)
    (row,) = await query(relay_config.database_url, "SELECT errors FROM outbox")
    (error,) = json.loads(row["errors"])
    # The backoff base is 0.05 s here: only Retry-After explains a 2 s delay.
    assert error["status"] == 429 and error["retry_in_s"] == 2.0
    (gap,) = _gaps(await subscriber.deliveries())
    assert gap >= 1.99


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
    m = metrics()
    async with open_relay(settings, m) as relay:
        await drain(relay, settings.database_url)
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
