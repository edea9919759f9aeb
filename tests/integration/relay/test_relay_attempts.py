"""Attempts are counted when an event is claimed, so a relay that dies mid-delivery still spends one;
an answer the relay cannot read is a failed attempt, never a crash of the relay (issue 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from services.relay import sql
from services.relay.build import open_relay
from shared.settings import Settings
from tests.support.poll import eventually
from tests.support.relay_helpers import SubscriberProcess, connect, fill, metrics, query, relay_settings

ROW = "SELECT attempts, claimed_by, dead_at, dead_reason, delivered_at, errors, last_error FROM outbox ORDER BY seq"


async def test_a_digit_like_retry_after_is_a_failed_attempt_and_the_relay_keeps_running(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    # "²".isdigit() is True but float("²") raises: this answer used to stop every relay replica.
    settings = relay_config.model_copy(update={"relay_max_attempts": 3})
    await fill(settings.database_url, count=1, aggregates=1)
    await subscriber.control(status=503, count=-1, retry_after="²")
    async with open_relay(settings, metrics()) as relay:
        running = asyncio.create_task(relay.run())
        try:

            async def dead() -> bool:
                if running.done():
                    running.result()
                    raise AssertionError("the relay stopped")
                (row,) = await query(settings.database_url, ROW)
                return row["dead_at"] is not None

            await eventually(dead, timeout_s=120, what="the dead letter")
            (row,) = await query(settings.database_url, ROW)
            assert (row["attempts"], row["dead_reason"]) == (3, "max_attempts")
            assert [(e["attempt"], e["status"]) for e in json.loads(row["errors"])] == [(1, 503), (2, 503), (3, 503)]

            # Still serving: the next event is delivered by the same relay.
            await subscriber.control(count=0)
            await fill(settings.database_url, count=1, aggregates=1)

            async def delivered() -> bool:
                rows = await query(settings.database_url, ROW)
                return rows[-1]["delivered_at"] is not None

            await eventually(delivered, timeout_s=60, what="the next event")
            assert not running.done()
        finally:
            relay.stop()
            with contextlib.suppress(Exception):
                await running


async def test_a_claim_spends_an_attempt_until_an_outcome_gives_it_back(database_url: str) -> None:
    await fill(database_url, count=2, aggregates=2)
    conn = await connect(database_url)
    try:
        first, second = await sql.claim(conn, "relay-a", 10, 60.0)
        assert (first.attempts, second.attempts) == (0, 0), "events carry the count from before their claim"
        rows = await query(database_url, ROW)
        assert [(r["attempts"], r["claimed_by"]) for r in rows] == [(1, "relay-a"), (1, "relay-a")]
        # A busy answer (settled as a retry with the old count) and a shutdown release spend nothing.
        busy = sql.Settlement(first.seq, "retry", first.attempts, delay_s=0.0)
        assert await sql.settle(conn, "relay-a", [busy]) == {first.seq}
        assert await sql.release(conn, "relay-a", [second.seq]) == 1
        rows = await query(database_url, ROW)
        assert [(r["attempts"], r["claimed_by"]) for r in rows] == [(0, None), (0, None)]
        # An acknowledgement keeps the claim's count: the delivery was that attempt.
        again = await sql.claim(conn, "relay-a", 10, 60.0)
        await sql.settle(conn, "relay-a", [sql.Settlement(e.seq, "delivered", e.attempts + 1, ack=True) for e in again])
        assert [r["attempts"] for r in await query(database_url, ROW)] == [1, 1]
    finally:
        await conn.close()


async def test_relays_dying_mid_delivery_end_in_a_dead_letter(database_url: str, subscriber: SubscriberProcess) -> None:
    settings = relay_settings(database_url, {"document.*": [subscriber.url]}, relay_max_attempts=3)
    await fill(database_url, count=1, aggregates=1)
    conn = await connect(database_url)
    try:
        for n in range(settings.relay_max_attempts):
            # A replica claims the event and dies before settling; its lease then runs out.
            (claimed,) = await sql.claim(conn, f"crashed-{n}", 10, 60.0)
            assert claimed.attempts == n
            await conn.execute("UPDATE outbox SET leased_until = now()")
    finally:
        await conn.close()
    async with open_relay(settings, metrics()) as relay:
        await relay.run_once()
    (row,) = await query(database_url, ROW)
    assert (row["attempts"], row["dead_reason"], row["delivered_at"]) == (3, "max_attempts", None)
    assert "no outcome recorded" in row["last_error"]
    assert (await subscriber.stats())["requests"] == 0, "an exhausted event is not sent once more"
