"""Work slots, claims and the life of one attempt (lease → stages → ready/failed/retry)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import uuid
from typing import Final, Literal

import structlog

from services.processor.heartbeat import LeaseLost, heartbeating
from services.processor.metrics import ProcessorMetrics
from services.processor.pipeline import Pipeline
from shared import lifecycle
from shared.db import Database, DatabaseUnavailable
from shared.errors import DocumentError, ErrorCode, ProcessingError
from shared.lifecycle import Lease, Stage
from shared.settings import Settings
from shared.subscriber import record_once

log = structlog.get_logger("kbingest.processor")

RETRY_BASE_S: Final = 5.0
RETRY_MAX_S: Final = 300.0
SHUTDOWN_GRACE_S: Final = 30.0

Accepted = Literal["accepted", "duplicate", "noop", "busy"]


def retry_delay_s(attempt: int, base_s: float = RETRY_BASE_S) -> float:
    """Jittered exponential backoff between attempts."""
    ceiling = min(RETRY_MAX_S, base_s * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter, not security


class Worker:
    """Holds at most ``PROCESSOR_CONCURRENCY`` leases; nothing is queued in memory."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        heartbeat_db: Database,
        pipeline: Pipeline,
        processor_id: str,
        metrics: ProcessorMetrics,
    ) -> None:
        self._settings = settings
        self._db = db
        self._heartbeat_db = heartbeat_db
        self._pipeline = pipeline
        self.processor_id = processor_id
        self._metrics = metrics
        self._capacity = settings.processor_concurrency
        self._reserved = 0
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.accepting = True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def accept(self, *, event_id: uuid.UUID, event_type: str, document_id: uuid.UUID) -> Accepted:
        """Record the event once and claim the document in one transaction; start the work."""
        if self._reserved + len(self._tasks) >= self._capacity:
            return "busy"
        self._reserved += 1
        try:
            async with self._db.transaction() as conn:
                if not await record_once(conn, event_id, event_type, document_id):
                    return "duplicate"
                lease = await lifecycle.claim(conn, document_id, owner=self.processor_id)
            if lease is None:
                return "noop"
            # The work outlives the delivery request: log it under the event that started it, not the request.
            context = contextvars.copy_context()
            context.run(_bind_work_context, event_id, document_id)
            task = asyncio.create_task(self._attempt(lease), name=f"document:{document_id}", context=context)
            self._tasks[document_id] = task
            self._metrics.slots_in_use.set(len(self._tasks))
            task.add_done_callback(functools.partial(self._finished, document_id))
            return "accepted"
        finally:
            self._reserved -= 1

    def _finished(self, document_id: uuid.UUID, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(document_id, None)
        self._metrics.slots_in_use.set(len(self._tasks))

    async def _attempt(self, lease: Lease) -> None:
        bound = log.bind(document_id=str(lease.document_id), attempt=lease.attempt, epoch=lease.epoch)
        bound.info("document.claimed")
        current: list[Stage | None] = [None]

        async def enter(stage: Stage) -> None:
            async with self._db.transaction() as conn:
                if not await lifecycle.advance_stage(conn, lease, stage):
                    raise LeaseLost(f"lease lost before {stage}")
            current[0] = stage
            bound.info("document.stage", stage=stage)

        work = asyncio.create_task(self._pipeline.run(lease, enter), name=f"pipeline:{lease.document_id}")
        try:
            async with heartbeating(
                self._heartbeat_db,
                lease,
                interval_s=self._settings.heartbeat_interval_s,
                work=work,  # type: ignore[arg-type]
            ) as beat:
                try:
                    outcome = await work
                except asyncio.CancelledError:
                    if beat.lost:
                        raise LeaseLost("heartbeat found the lease gone") from None
                    raise
            async with self._db.transaction() as conn:
                if not await lifecycle.mark_ready(conn, lease, chunk_count=outcome.chunk_count):
                    raise LeaseLost("lease lost before marking ready")
            self._metrics.processed.labels("ready").inc()
            bound.info("document.ready", chunk_count=outcome.chunk_count)
        except LeaseLost as exc:
            self._metrics.processed.labels("lease_lost").inc()
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

    async def _fail(
        self, lease: Lease, error: DocumentError, stage: Stage | None, bound: structlog.BoundLogger
    ) -> None:
        try:
            async with self._db.transaction() as conn:
                outcome = await lifecycle.fail_or_retry(
                    conn,
                    lease,
                    error,
                    stage=stage,
                    retry_delay_s=retry_delay_s(lease.attempt, self._settings.retry_base_s),
                )
        except DatabaseUnavailable as exc:
            # The heartbeat stops with us, so the reconciler rescues the document after STALE_AFTER.
            bound.error("document.outcome_not_recorded", error=str(exc), code=error.code.value)
            return
        self._metrics.processed.labels(outcome).inc()
        bound.warning("document." + outcome, code=error.code.value, message=error.message, stage=stage)

    async def _hand_back(self, lease: Lease, stage: Stage | None, bound: structlog.BoundLogger) -> None:
        try:
            async with self._db.transaction() as conn:
                handed = await lifecycle.hand_back(conn, lease, stage=stage)
        except DatabaseUnavailable as exc:
            bound.error("document.hand_back_failed", error=str(exc))
            return
        self._metrics.processed.labels("handed_back").inc()
        bound.info("document.handed_back", handed=handed)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop taking events, cancel in-flight work and hand those documents back at once."""
        self.accepting = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)


def _bind_work_context(event_id: uuid.UUID, document_id: uuid.UUID) -> None:
    structlog.contextvars.unbind_contextvars("request_id")
    structlog.contextvars.bind_contextvars(event_id=str(event_id), document_id=str(document_id))
