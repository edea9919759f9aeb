"""Work slots, claims and the life of one attempt (lease → stages → ready/failed/retry)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import structlog
from sqlalchemy.exc import DBAPIError

from services.processor.deletion import purge_cancelled_builds
from services.processor.deps import ProcessorDeps
from services.processor.fence import check_lease
from services.processor.heartbeat import Heartbeat, LeaseLost, heartbeating
from services.processor.stages import Pipeline
from shared import lifecycle
from shared.aio import wait_for
from shared.db import DatabaseUnavailable
from shared.errors import DocumentError, ErrorCode, ProcessingError
from shared.inbox import record_once
from shared.lifecycle import Lease, Ready
from shared.storage import StorageUnavailable
from shared.vocabulary import Stage

log = structlog.get_logger("kbingest.processor")

RETRY_BASE_S: Final = 5.0
RETRY_MAX_S: Final = 300.0
SHUTDOWN_GRACE_S: Final = 30.0

Noted = Literal["accepted", "duplicate"]

# While a slot is free, look for due work this often even without a wake-up: a retry's backoff ends,
# a wake-up went to another replica, a peer handed a document back.
PULL_INTERVAL_S: Final = 1.0


def retry_delay_s(attempt: int, base_s: float = RETRY_BASE_S) -> float:
    """Jittered exponential backoff between attempts."""
    ceiling = min(RETRY_MAX_S, base_s * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter, not security


@dataclass(kw_only=True, eq=False)
class Worker:
    """Holds at most ``PROCESSOR_CONCURRENCY`` leases and pulls the next due document whenever one is free.

    Events are wake-ups, not work orders: whichever processor has a free slot takes the next document
    in dispatch order (shared.queue), so a busy processor never refuses an event and a freed slot is
    filled at once. Nothing is queued in memory; the documents table is the queue.
    """

    deps: ProcessorDeps
    pipeline: Pipeline
    processor_id: str
    pull_interval_s: float = PULL_INTERVAL_S
    # Without its presence lock the reconciler would take a new claim back as a dead processor's.
    may_claim: Callable[[], bool] = lambda: True
    accepting: bool = field(default=True, init=False)
    _tasks: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict, init=False, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _builds_purged_at: float = field(default=float("-inf"), init=False, repr=False)

    @property
    def capacity(self) -> int:
        return self.deps.settings.processor_concurrency

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def wake(self) -> None:
        """Look for due work now (an event arrived, a slot freed, or stop)."""
        self._wake.set()

    async def note(self, *, event_id: uuid.UUID, event_type: str, document_id: uuid.UUID) -> Noted:
        """Record a work event once (the inbox dedups redeliveries) and wake the scheduler."""
        async with self.deps.db.transaction() as conn:
            fresh = await record_once(conn, event_id, event_type, document_id)
        self.wake()
        return "accepted" if fresh else "duplicate"

    async def run(self) -> None:
        """Fill free slots in dispatch order until ``stop()``; a lost database is retried, never fatal."""
        failures = 0
        while self.accepting:
            self._wake.clear()
            try:
                await self._fill()
                await self._purge_cancelled_builds()
                failures = 0
            except (DatabaseUnavailable, DBAPIError) as exc:
                # Unavailable, or a deadlock against a concurrent KB deletion: the next pass retries.
                failures += 1
                log.warning("processor.claim_failed", error=f"{type(exc).__name__}: {exc}"[:300], failures=failures)
            idle = self.accepting and len(self._tasks) < self.capacity
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake.wait(), self.pull_interval_s if idle else None)

    async def _fill(self) -> None:
        while self.accepting and self.may_claim() and len(self._tasks) < self.capacity:
            async with self.deps.db.transaction() as conn:
                lease = await lifecycle.claim_next(conn, owner=self.processor_id)
            if lease is None:
                return
            self._start(lease)

    async def _purge_cancelled_builds(self) -> None:
        """Purge builds cancelled without an event (a superseded replacement, a cancelled re-index).

        At most once per pull interval: wake-ups come with every event, the look costs a query.
        """
        now = time.monotonic()
        if now - self._builds_purged_at < self.pull_interval_s:
            return
        self._builds_purged_at = now
        try:
            await purge_cancelled_builds(self.deps.db, self.deps.vectors)
        except ProcessingError as exc:
            # The vector store is down: the rows stay ``deleting`` and a later poll purges them.
            log.warning("processor.build_purge_failed", code=exc.code.value, error=exc.message[:300])

    def _start(self, lease: Lease) -> None:
        # The work outlives any request: log it under the event that queued it.
        context = contextvars.copy_context()
        context.run(_bind_work_context, lease.event_id, lease.document_id)
        task = asyncio.create_task(self._attempt(lease), name=f"document:{lease.document_id}", context=context)
        self._tasks[lease.document_id] = task
        self.deps.metrics.slots_in_use.set(len(self._tasks))
        task.add_done_callback(functools.partial(self._finished, lease.document_id))

    def _finished(self, document_id: uuid.UUID, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(document_id, None)
        self.deps.metrics.slots_in_use.set(len(self._tasks))
        self.wake()

    async def _attempt(self, lease: Lease) -> None:
        bound = log.bind(document_id=str(lease.document_id), attempt=lease.attempt, epoch=lease.epoch)
        bound.info("document.claimed")
        current: list[Stage | None] = [None]

        async def enter(stage: Stage) -> None:
            async with self.deps.db.transaction() as conn:
                if not await lifecycle.advance_stage(conn, lease, stage):
                    raise LeaseLost(f"lease lost before {stage}")
            current[0] = stage
            bound.info("document.stage", stage=stage)

        confirm = functools.partial(check_lease, self.deps.db, lease)
        work = asyncio.create_task(self.pipeline.run(lease, enter, confirm), name=f"pipeline:{lease.document_id}")
        try:
            beat = Heartbeat(
                db=self.deps.heartbeat_db,
                lease=lease,
                interval_s=self.deps.settings.heartbeat_interval_s,
                work=work,
                failures=self.deps.metrics.heartbeat_failures,
            )
            async with heartbeating(beat):
                try:
                    outcome = await work
                except asyncio.CancelledError:
                    if beat.lost:
                        raise LeaseLost("heartbeat found the lease gone") from None
                    if beat.error is not None:
                        # Without a renewable lease the work is stopped and the attempt retried, not
                        # left running unrenewed until the reconciler rescues it as stalled.
                        raise ProcessingError(
                            ErrorCode.INTERNAL_ERROR, f"heartbeat failed, attempt stopped: {beat.error}"
                        ) from None
                    raise
            async with self.deps.db.transaction() as conn:
                ready = await lifecycle.mark_ready(
                    conn, lease, chunk_count=outcome.chunk_count, retention=self.deps.settings.version_retention
                )
                if ready is None:
                    raise LeaseLost("lease lost before marking ready")
            self.deps.metrics.processed.labels("ready").inc()
            bound.info("document.ready", chunk_count=outcome.chunk_count)
            await self._remove_obsolete(ready, bound)
        except LeaseLost as exc:
            self.deps.metrics.processed.labels("lease_lost").inc()
            bound.warning("document.lease_lost", reason=str(exc))
        except ProcessingError as exc:
            await self._fail(lease, exc.to_document_error(), current[0], bound)
        except asyncio.CancelledError:
            work.cancel()
            await self._hand_back(lease, current[0], bound)
            raise
        except Exception as exc:  # any bug becomes internal_error on the document, never a dead worker
            bound.exception("document.internal_error")
            await self._fail(
                lease, DocumentError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500]), current[0], bound
            )

    async def _remove_obsolete(self, ready: Ready, bound: structlog.BoundLogger) -> None:
        """After an activation committed: the previous serving build's points, the purged versions' files.

        Invisible to search from the commit on, so a failure here is logged, not retried: a build row's
        points are purged again by the reconciler's tombstone pass, a file by its orphan sweep.
        """
        for row_id in ready.purge_rows:
            try:
                await self.deps.vectors.delete_document(row_id)
            except ProcessingError as exc:
                bound.warning("document.previous_build_purge_failed", build_id=str(row_id), error=exc.message[:300])
        for key in ready.obsolete_keys:
            try:
                await self.deps.store.delete(key)
            except StorageUnavailable as exc:
                bound.warning("document.version_file_delete_failed", key=key, error=str(exc)[:300])
        if ready.purge_rows or ready.obsolete_keys:
            bound.info(
                "document.version_activated",
                previous_build_ids=[str(r) for r in ready.purge_rows],
                purged_keys=len(ready.obsolete_keys),
            )

    async def _fail(
        self, lease: Lease, error: DocumentError, stage: Stage | None, bound: structlog.BoundLogger
    ) -> None:
        try:
            async with self.deps.db.transaction() as conn:
                outcome = await lifecycle.fail_or_retry(
                    conn,
                    lease,
                    error,
                    stage=stage,
                    retry_delay_s=retry_delay_s(lease.attempt, self.deps.settings.retry_base_s),
                )
        except DatabaseUnavailable as exc:
            # The heartbeat stops with us, so the reconciler rescues the document after STALE_AFTER.
            bound.error("document.outcome_not_recorded", error=str(exc), code=error.code.value)
            return
        self.deps.metrics.processed.labels(outcome).inc()
        bound.warning("document." + outcome, code=error.code.value, message=error.message, stage=stage)

    async def _hand_back(self, lease: Lease, stage: Stage | None, bound: structlog.BoundLogger) -> None:
        try:
            async with self.deps.db.transaction() as conn:
                handed = await lifecycle.hand_back(conn, lease, stage=stage)
        except DatabaseUnavailable as exc:
            bound.error("document.hand_back_failed", error=str(exc))
            return
        self.deps.metrics.processed.labels("handed_back").inc()
        bound.info("document.handed_back", handed=handed)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop claiming, cancel in-flight work and hand those documents back at once."""
        self.accepting = False
        self.wake()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)


def _bind_work_context(event_id: str | None, document_id: uuid.UUID) -> None:
    structlog.contextvars.unbind_contextvars("request_id")
    structlog.contextvars.bind_contextvars(event_id=event_id, document_id=str(document_id))
