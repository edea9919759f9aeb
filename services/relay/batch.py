"""One claimed batch: send its requests concurrently, acknowledge finished ones in small groups."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog

from services.relay.delivery import MayStart, Outcome, Sender
from services.relay.dispatch import Dispatcher, Plan, Result
from services.relay.pool import is_transient
from services.relay.sql import ClaimedEvent, Settlement
from shared.aio import wait_for
from shared.redact import redact_url

# Finished deliveries are written at most this long after their answer, in one UPDATE per group:
# a slow subscriber never holds back the acks (and the successors) of fast ones.
ACK_INTERVAL_S: Final = 0.02
ACK_GROUP_MAX: Final = 500

log = structlog.get_logger("kbingest.relay")

Settle = Callable[[Result], Awaitable[None]]


class _Acks:
    """Row updates of finished requests waiting for the next group write, and the batch's progress."""

    def __init__(self, decided: Result, requests: int) -> None:
        self.pending = decided
        self.remaining = requests
        # Set when the writer has something to do: a first update to time, a full group, the end.
        self.wake = asyncio.Event()

    def add(self, result: Result) -> None:
        was_empty = not self.pending
        self.pending.extend(result)
        self.remaining -= 1
        if was_empty or not self.remaining or len(self.pending) >= ACK_GROUP_MAX:
            self.wake.set()

    def take(self) -> Result:
        # Taken out before writing: a cancellation mid-write must not write it twice.
        group, self.pending = self.pending, Result()
        return group


async def run_batch(
    events: Sequence[ClaimedEvent], *, dispatcher: Dispatcher, deliverer: Sender, may_start: MayStart, settle: Settle
) -> None:
    """Deliver ``events`` and settle every one of them (released if never attempted).

    Cancelled (shutdown after the grace), it still acknowledges what finished, then re-raises.
    """
    try:
        plan = await dispatcher.plan(events)
    except Exception as exc:
        # Only the multi-route state read touches Postgres before any request is sent.
        if not is_transient(exc):
            raise
        log.warning("outbox.dispatch_deferred", events=len(events), error=f"{type(exc).__name__}: {exc}")
        await settle(Result([Settlement(e.seq, "release", e.attempts) for e in events]))
        return
    acks = _Acks(plan.decided, len(plan.units))
    # One worker per request slot of a URL sends its requests in turn and resolves each answer as it
    # comes: no task per event, none waiting on the slot semaphore, and this loop wakes per group
    # write, not per answer (a batch of 1,000 events would otherwise be 1,000 tasks and wake-ups).
    queues: dict[str, deque[list[ClaimedEvent]]] = defaultdict(deque)
    for url, chunk in plan.units:
        queues[url].append(chunk)
    workers = [
        asyncio.create_task(_work(deliverer, dispatcher, plan, url, chunks, may_start, acks))
        for url, chunks in queues.items()
        for _ in range(min(len(chunks), deliverer.capacity(url)))
    ]
    try:
        flushed_at = time.monotonic()
        while acks.remaining or acks.pending:
            _raise_failed(workers)
            due = flushed_at + ACK_INTERVAL_S
            if acks.pending and (not acks.remaining or len(acks.pending) >= ACK_GROUP_MAX or time.monotonic() >= due):
                await settle(acks.take())
                flushed_at = time.monotonic()
                continue
            # Until the first update to write (then until its group is due), a full group, the end, or a failure.
            acks.wake.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(_first(acks.wake, workers), max(0.0, due - time.monotonic()) if acks.pending else None)
        _raise_failed(workers)
    except asyncio.CancelledError:
        for worker in workers:
            worker.cancel()
        if acks.pending:
            await settle(acks.take())
        raise


async def _work(
    deliverer: Sender,
    dispatcher: Dispatcher,
    plan: Plan,
    url: str,
    chunks: deque[list[ClaimedEvent]],
    may_start: MayStart,
    acks: _Acks,
) -> None:
    while chunks:
        chunk = chunks.popleft()
        try:
            answers = await deliverer.deliver(url, chunk, may_start=may_start)
        except Exception as exc:
            # One event's bad answer (or a bug on its path) must not stop the relay: every replica would
            # claim it again and die the same way. It is a failed attempt, recorded, with backoff.
            log.exception("outbox.delivery_error", subscriber=redact_url(url), events=len(chunk), event_id=chunk[0].id)
            answers = [Outcome.relay_error(exc)] * len(chunk)
        acks.add(dispatcher.resolve(plan, url, chunk, answers))


async def _first(wake: asyncio.Event, workers: Sequence[asyncio.Task[None]]) -> None:
    """Until ``wake`` is set or a worker ends (one that ends before the batch is done has failed)."""
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait([waiter, *(w for w in workers if not w.done())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _raise_failed(workers: Sequence[asyncio.Task[None]]) -> None:
    for worker in workers:
        if worker.done() and not worker.cancelled() and (exc := worker.exception()) is not None:
            raise exc
