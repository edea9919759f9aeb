"""The relay worker: claim due events, deliver them, settle; wake on NOTIFY, poll, or stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import asyncpg
import structlog

from services.relay import sql
from services.relay.batch import run_batch
from services.relay.delivery import Deliverer
from services.relay.dispatch import Dispatcher
from services.relay.dispatch import Result as DispatchResult
from services.relay.groups import AnyOf
from services.relay.listener import Listener
from services.relay.metrics import RelayMetrics
from services.relay.outcomes import RetryPolicy
from services.relay.pool import LISTEN_APPLICATION_NAME, connection, is_transient
from services.relay.routes import Router
from services.relay.sql import ClaimedEvent, DeliveryState
from services.relay.wakeups import DueTimes
from shared.aio import wait_for
from shared.backoff import backoff_s
from shared.connection_budget import connection_budget
from shared.db import asyncpg_dsn, session_settings
from shared.settings import Settings

POLL_INTERVAL_S: Final = 1.0
SHUTDOWN_GRACE_S: Final = 10.0
# A claimed event is invisible to other relays this long; it must cover a request and its settle.
LEASE_S: Final = 60.0
SETTLE_ALLOWANCE_S: Final = 10.0
STATS_INTERVAL_S: Final = 5.0
DB_RETRY_BASE_S: Final = 0.2
DB_RETRY_MAX_S: Final = 5.0
# /readyz fails when the loop has not passed for this long (it passes at least every poll interval).
LOOP_STALE_S: Final = 30.0

log = structlog.get_logger("kbingest.relay")
T = TypeVar("T")


class SideTaskDied(RuntimeError):
    """The LISTEN or stats task ended on its own: the relay must not look alive while deaf."""


def default_relay_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Relay:
    """``run()`` until ``stop()``; ``run_once()`` delivers everything due now and returns (tests, burst mode)."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        deliverer: Deliverer,
        metrics: RelayMetrics,
        relay_id: str | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    ) -> None:
        self.relay_id = relay_id or default_relay_id()
        self._pool = pool
        self._metrics = metrics
        self._grace_s = shutdown_grace_s
        self._claim_batch = settings.relay_claim_batch
        # Two batches in flight: the next claim overlaps the current delivery.
        self._max_in_flight = 2 * settings.relay_claim_batch
        self._min_claim = max(1, settings.relay_claim_batch // 2)
        request_budget_s = settings.relay_connect_timeout_s + settings.relay_timeout_s
        self._lease_s = max(LEASE_S, 3 * request_budget_s + SETTLE_ALLOWANCE_S)
        self._start_window_s = self._lease_s - request_budget_s - SETTLE_ALLOWANCE_S
        router = Router(settings.effective_routes())
        self._deliverer = AnyOf(deliverer, router.subscribers, member_failures=metrics.member_failures)
        self._dispatcher = Dispatcher(
            router=router,
            batch_subscribers=settings.relay_batch_subscribers,
            batch_max=settings.relay_batch_max,
            sender=self._deliverer,
            policy=RetryPolicy(
                settings.relay_max_attempts, settings.relay_backoff_base_s, settings.relay_backoff_max_s
            ),
            metrics=metrics,
            load_deliveries=self._load_deliveries,
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._due = DueTimes(poll_interval_s)
        self.listener = Listener(
            asyncpg_dsn(settings.database_url),
            server_settings=session_settings(LISTEN_APPLICATION_NAME, settings.db_statement_timeout_s),
            on_notify=self._wake.set,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        self._in_flight = 0
        self.settled = 0
        self._claimed: set[int] = set()
        self.last_tick = time.monotonic()
        metrics.track_connections(self.connections_in_use, connection_budget(settings)["relay"].total)

    def stop(self) -> None:
        """Stop claiming; ``run()`` then finishes in-flight deliveries within the grace period."""
        self._stop.set()

    def health(self) -> dict[str, str]:
        """Per-check status for /readyz: ``ok`` or what is wrong."""
        age = time.monotonic() - self.last_tick
        return {
            "listen": self.listener.status(),
            "loop": "ok" if age < LOOP_STALE_S else f"stalled: no pass for {age:.0f}s",
        }

    async def run_once(self) -> int:
        """Deliver every event due now (including successors unblocked meanwhile); returns how many settled."""
        settled = await self._drain()
        await self.refresh_stats()
        return settled

    async def run(self) -> None:
        """Serve until ``stop()``; raises (after a clean shutdown) if a side task dies or on a non-transient error."""
        side = [
            asyncio.create_task(self.listener.run(self._stop), name="relay.listen"),
            asyncio.create_task(self._stats_loop(), name="relay.stats"),
        ]
        failures = 0
        try:
            while not self._stop.is_set():
                _check_side_tasks(side)
                self._tick()
                self._wake.clear()
                self._due.take_due(time.monotonic())
                try:
                    await self._drain()
                    failures = 0
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    failures += 1
                    log.warning("relay.database_unavailable", error=f"{type(exc).__name__}: {exc}", failures=failures)
                    await self._sleep(backoff_s(failures, base_s=DB_RETRY_BASE_S, max_s=DB_RETRY_MAX_S))
                    continue
                await self._wait_for_wake(side)
        finally:
            await self._shutdown(side)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    def connections_in_use(self) -> int:
        """Pool connections checked out plus the LISTEN connection."""
        held = int(self._pool.get_size() - self._pool.get_idle_size())
        return held + (1 if self.listener.connected else 0)

    async def _drain(self) -> int:
        settled_before = self.settled
        while not self._stop.is_set():
            self._tick()
            room = self._max_in_flight - self._in_flight
            # Claim in sizeable batches: each claim scans the pending index, so a claim per settled
            # event would cost more than it delivers when a deep backlog is blocked behind heads.
            if room >= self._min_claim or not self._tasks:
                limit = min(room, self._claim_batch)
                events = await self._claim(limit)
                if events:
                    self._spawn(events)
                if len(events) == limit:
                    continue
            if not self._tasks:
                break
            await self._wait_for_progress()
        return self.settled - settled_before

    async def _claim(self, limit: int) -> list[ClaimedEvent]:
        async with connection(self._pool) as conn:
            events = await sql.claim(conn, self.relay_id, limit, self._lease_s)
        self._claimed.update(event.seq for event in events)
        return events

    def _spawn(self, events: list[ClaimedEvent]) -> None:
        self._in_flight += len(events)
        claimed_at = time.monotonic()

        async def settle(result: DispatchResult) -> None:
            await self._settle(result, lease_deadline=claimed_at + self._lease_s)

        start_by = claimed_at + self._start_window_s

        def may_start() -> bool:
            # After stop() only requests already sent may finish; the rest are handed back.
            return not self._stop.is_set() and time.monotonic() < start_by

        batch = run_batch(
            events, dispatcher=self._dispatcher, deliverer=self._deliverer, may_start=may_start, settle=settle
        )
        self._tasks.add(asyncio.create_task(batch))

    async def _wait_for_progress(self) -> None:
        """Until some events settle (room to claim again), a batch ends, or stop; a failed batch re-raises."""
        self._progress.clear()
        waiters = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._progress.wait())]
        try:
            await asyncio.wait({*self._tasks, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        finished = [task for task in self._tasks if task.done()]
        self._tasks.difference_update(finished)
        for task in finished:
            task.result()

    async def _settle(self, result: DispatchResult, *, lease_deadline: float) -> None:
        """Write outcomes in one transaction, retrying a lost database until the lease would expire."""

        async def write(conn: Any) -> set[int]:
            return await sql.settle(conn, self.relay_id, result.settlements, result.updates)

        seqs = {s.seq for s in result.settlements}
        try:
            written = await self._with_retry(write, "outbox.settle", deadline=lease_deadline)
        finally:
            # Settled or not, these events leave this relay's hands: make room for the next claim.
            self._in_flight -= len(seqs)
            self._progress.set()
        if written is None:
            log.error("outbox.settle_abandoned", events=len(seqs), reason="database unavailable until lease expiry")
            return
        self.settled += len(seqs)
        self._claimed.difference_update(seqs)
        # Nobody NOTIFYs when a put-back event falls due: the loop must wake for it by itself.
        now = time.monotonic()
        for s in result.settlements:
            if s.action == "retry" and s.seq in written:
                self._due.add(s.delay_s, now)
        if lost := len(seqs - written):
            log.warning("outbox.lease_lost", events=lost, relay_id=self.relay_id)

    async def _load_deliveries(self, seqs: Sequence[int]) -> dict[int, dict[str, DeliveryState]]:
        async with connection(self._pool) as conn:
            return await sql.load_deliveries(conn, seqs)

    async def _with_retry(self, op: Callable[[Any], Awaitable[T]], name: str, *, deadline: float) -> T | None:
        """Run ``op(conn)``; on transient errors back off and retry until ``deadline`` (monotonic)."""
        failures = 0
        while True:
            try:
                async with connection(self._pool) as conn:
                    return await op(conn)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                delay = backoff_s(failures, base_s=DB_RETRY_BASE_S, max_s=DB_RETRY_MAX_S)
                if time.monotonic() + delay > deadline:
                    return None
                log.warning(f"{name}_retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)

    async def refresh_stats(self) -> None:
        """Update the outbox gauges from Postgres."""
        async with connection(self._pool) as conn:
            self._metrics.observe_health(await sql.health(conn))

    async def _stats_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.refresh_stats()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.info("relay.stats_unavailable", error=f"{type(exc).__name__}: {exc}")
            await self._sleep(STATS_INTERVAL_S)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await wait_for(self._stop.wait(), seconds)

    async def _wait_for_wake(self, side: Iterable[asyncio.Task[None]]) -> None:
        """Whichever first: a NOTIFY, a put-back event falling due, the poll interval, stop, or a side task ending."""
        timeout = self._due.wait_s(time.monotonic())
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait([*waiters, *side], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _shutdown(self, side: Sequence[asyncio.Task[None]]) -> None:
        """Stop claiming, let in-flight deliveries finish within the grace, cancel the rest, hand leases back."""
        self._stop.set()
        if self._tasks:
            log.info("relay.draining", batches=len(self._tasks), events=self._in_flight, grace_s=self._grace_s)
            done, pending = await asyncio.wait(self._tasks, timeout=self._grace_s)
            for task in pending:
                task.cancel()
            for task in [*done, *pending]:
                with contextlib.suppress(asyncio.CancelledError):
                    if (exc := await _exception(task)) is not None:
                        log.error("relay.batch_failed", error=f"{type(exc).__name__}: {exc}")
            self._tasks.clear()
        await self._release()
        for side_task in side:
            side_task.cancel()
        for side_task in side:
            with contextlib.suppress(asyncio.CancelledError):
                if (exc := await _exception(side_task)) is not None:
                    log.error("relay.side_task_failed", task=side_task.get_name(), error=f"{type(exc).__name__}: {exc}")

    async def _release(self) -> None:
        if not self._claimed:
            return
        seqs = sorted(self._claimed)

        async def release(conn: Any) -> int:
            return await sql.release(conn, self.relay_id, seqs)

        released = await self._with_retry(release, "outbox.release", deadline=time.monotonic() + self._grace_s)
        if released is None:
            log.error("outbox.release_failed", events=len(seqs), reason="database down; leases expire by themselves")
        else:
            log.info("outbox.leases_released", events=released)
        self._claimed.clear()


async def _exception(task: asyncio.Task[Any]) -> BaseException | None:
    """The task's exception once it is done (CancelledError propagates to the caller's suppress)."""
    await asyncio.wait([task])
    return task.exception()


def _check_side_tasks(side: Iterable[asyncio.Task[None]]) -> None:
    for task in side:
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise SideTaskDied(f"{task.get_name()} ended: {exc!r}") from exc
