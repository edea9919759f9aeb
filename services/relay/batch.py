"""One claimed batch: send its requests concurrently, acknowledge finished ones in small groups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog

from services.relay.claim import ClaimedEvent, Settlement
from services.relay.delivery import MayStart, Outcome, Sender
from services.relay.dispatch import Dispatcher, Plan, Result
from services.relay.pool import is_transient
from shared.aio import wait_for

# Finished deliveries are written at most this long after their answer, in one UPDATE per group:
# a slow subscriber never holds back the acks (and the successors) of fast ones.
ACK_INTERVAL_S: Final = 0.02
ACK_GROUP_MAX: Final = 500

log = structlog.get_logger("kbingest.relay")

Settle = Callable[[Result], Awaitable[None]]
Finished = tuple[str, list[ClaimedEvent], list[Outcome]]


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
    # Requests report into a queue as they finish: O(1) per answer, however large the batch.
    finished: asyncio.Queue[Finished] = asyncio.Queue()
    tasks = [asyncio.create_task(_request(deliverer, url, chunk, may_start, finished)) for url, chunk in plan.units]
    pending = Result()
    pending.extend(plan.decided)

    async def flush() -> None:
        # Taken out of ``pending`` before writing: a cancellation mid-write must not write it twice.
        nonlocal pending
        group, pending = pending, Result()
        await settle(group)

    try:
        remaining = len(tasks)
        flushed_at = time.monotonic()
        while remaining:
            wait_s = max(0.0, flushed_at + ACK_INTERVAL_S - time.monotonic()) if pending else None
            try:
                item = await wait_for(finished.get(), wait_s)
            except TimeoutError:
                await flush()
                flushed_at = time.monotonic()
                continue
            remaining -= 1 + _absorb(dispatcher, plan, item, pending, finished)
            if pending and (not remaining or len(pending) >= ACK_GROUP_MAX):
                await flush()
                flushed_at = time.monotonic()
        if pending:
            await flush()
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        while not finished.empty():
            _absorb(dispatcher, plan, finished.get_nowait(), pending, finished)
        if pending:
            await flush()
        raise


async def _request(
    deliverer: Sender, url: str, chunk: list[ClaimedEvent], may_start: MayStart, finished: asyncio.Queue[Finished]
) -> None:
    try:
        answers = await deliverer.deliver(url, chunk, may_start=may_start)
    except Exception as exc:
        # One event's bad answer (or a bug on its path) must not stop the relay: every replica would
        # claim it again and die the same way. It is a failed attempt, recorded, with backoff.
        log.exception("outbox.delivery_error", subscriber=url, events=len(chunk), event_id=chunk[0].id)
        answers = [Outcome.relay_error(exc)] * len(chunk)
    finished.put_nowait((url, chunk, answers))


def _absorb(dispatcher: Dispatcher, plan: Plan, item: Finished, into: Result, more: asyncio.Queue[Finished]) -> int:
    """Resolve ``item`` and every answer already queued behind it; returns how many extra were taken."""
    extra = 0
    while True:
        url, chunk, answers = item
        into.extend(dispatcher.resolve(plan, url, chunk, answers))
        if more.empty():
            return extra
        item = more.get_nowait()
        extra += 1
