"""The real ``kbingest relay`` process: connection ceiling under a backlog, SIGTERM, dying side tasks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from services.relay.build import open_relay
from services.relay.listener import Listener
from services.relay.worker import SideTaskDied
from shared.db import asyncpg_dsn
from shared.settings import Settings
from tests.support.poll import eventually
from tests.support.relay_helpers import (
    SubscriberProcess,
    analyse,
    batch_relay_settings,
    connect,
    env_for,
    fill,
    metrics,
    pending,
    query,
    relay_process,
    relay_ready,
    relay_settings,
    start_subscriber,
)
from tests.support.servers import ROOT, free_port

GRACE_S = 10.0  # services.relay.worker.SHUTDOWN_GRACE_S


async def _drain_under_ceiling(database_url: str, events: int, subscriber: SubscriberProcess) -> int:
    """Drain ``events`` through a relay process while sampling its connections; returns the peak."""
    settings = batch_relay_settings(database_url, subscriber.batch_url, relay_port=free_port(), db_max_connections=3)
    await fill(database_url, count=events, aggregates=events // 2)
    watcher = await connect(database_url)
    peak = 0
    try:
        with relay_process(settings) as proc:
            deadline = time.monotonic() + 30 + events / 500
            while time.monotonic() < deadline:
                count = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'kbingest.relay%'"
                )
                peak = max(peak, count)
                if (
                    await watcher.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL")
                    == 0
                ):
                    break
                assert proc.poll() is None, "the relay died"
                await asyncio.sleep(0.02)
            assert await pending(database_url) == 0, "backlog not drained in time"
    finally:
        await watcher.close()
    report = analyse(await subscriber.deliveries())
    assert report.unique == events and report.order_violations == []
    return peak


async def test_connection_ceiling_holds_draining_10k(database_url: str, subscriber: SubscriberProcess) -> None:
    peak = await _drain_under_ceiling(database_url, 10_000, subscriber)
    assert 2 <= peak <= 3 + 1, f"peak {peak} connections, ceiling DB_MAX_CONNECTIONS + 1 = 4"


@pytest.mark.slow
async def test_connection_ceiling_holds_draining_100k(database_url: str) -> None:
    subscriber = start_subscriber("--no-verify")
    try:
        peak = await _drain_under_ceiling(database_url, 100_000, subscriber)
    finally:
        await subscriber.close()
    assert 2 <= peak <= 3 + 1, f"peak {peak} connections, ceiling DB_MAX_CONNECTIONS + 1 = 4"


async def test_sigterm_finishes_in_flight_and_leaves_nothing_claimed(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    settings = relay_settings(database_url, {"document.*": [subscriber.url]}, relay_port=free_port())
    await fill(database_url, count=200, aggregates=200)
    await subscriber.control(delay_s=2.0)
    with relay_process(settings) as proc:
        await eventually(lambda: relay_ready(settings.relay_port), timeout_s=60, what="relay ready")
        await eventually(lambda: _requests(subscriber, 1), timeout_s=30, what="a delivery in flight")
        sent_before = (await subscriber.stats())["requests"]
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, GRACE_S + 30)
        elapsed = time.monotonic() - started
    assert code == 0
    # In-flight requests (2 s each) finish; queued ones are not started: well within the grace
    # (a few seconds of slack for interpreter teardown on a busy machine).
    assert elapsed < GRACE_S + 5, elapsed
    assert (await subscriber.stats())["requests"] <= sent_before + settings.relay_concurrency
    claimed = await query(database_url, "SELECT count(*) AS n FROM outbox WHERE claimed_by IS NOT NULL")
    assert claimed[0]["n"] == 0
    delivered = await query(database_url, "SELECT count(*) AS n FROM outbox WHERE delivered_at IS NOT NULL")
    assert delivered[0]["n"] >= 1, "in-flight deliveries were allowed to finish and were settled"
    left = await query(
        database_url, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE 'kbingest.relay%'"
    )
    assert left[0]["n"] == 0


async def test_stop_cancels_hung_deliveries_after_the_grace_and_releases_leases(
    relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    settings = relay_config.model_copy(update={"relay_timeout_s": 60.0})
    await fill(settings.database_url, count=20, aggregates=20)
    await subscriber.control(delay_s=60.0)
    async with open_relay(settings, metrics(), shutdown_grace_s=1.0) as relay:
        task = asyncio.create_task(relay.run())
        await eventually(lambda: _requests(subscriber, 1), timeout_s=30, what="a hung delivery")
        relay.stop()
        await asyncio.wait_for(task, 30)
    rows = await query(settings.database_url, "SELECT claimed_by, available_at <= now() AS due, attempts FROM outbox")
    assert all(r["claimed_by"] is None and r["due"] and r["attempts"] == 0 for r in rows)


async def test_a_dead_listen_task_stops_the_relay(relay_config: Settings) -> None:
    async with open_relay(relay_config, metrics()) as relay:
        # A database that does not exist is a permanent failure, not something to retry.
        missing = asyncpg_dsn(relay_config.database_url).rsplit("/", 1)[0] + "/no_such_database"
        relay.listener = Listener(missing, server_settings={}, on_notify=lambda: None)
        with pytest.raises(SideTaskDied, match=r"relay\.listen"):
            await asyncio.wait_for(relay.run(), 30)
        assert "no_such_database" in relay.health()["listen"]


def test_relay_process_exits_non_zero_when_it_cannot_work(database_url: str) -> None:
    broken = relay_settings(database_url.rsplit("/", 1)[0] + "/no_such_database", {}, relay_port=free_port())
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "relay"],
        env=env_for(broken),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]


async def _requests(subscriber: SubscriberProcess, n: int) -> bool:
    return int((await subscriber.stats())["requests"]) >= n
