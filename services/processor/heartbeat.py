"""Lease heartbeat around one unit of work: renews every interval, cancels the work if the lease is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from shared.aio import wait_for
from shared.db import Database, DatabaseUnavailable
from shared.lifecycle import Lease, heartbeat

log = structlog.get_logger("kbingest.processor.heartbeat")


class LeaseLost(Exception):
    """Another holder took the document (epoch moved): stop and write nothing."""


class Heartbeat:
    """Renews ``lease`` on its own connection budget; flags and cancels the work on loss."""

    def __init__(self, db: Database, lease: Lease, *, interval_s: float, work: asyncio.Task[object]) -> None:
        self._db = db
        self._lease = lease
        self._interval_s = interval_s
        self._work = work
        self._stop = asyncio.Event()
        self.lost = False
        self.beats = 0

    async def run(self) -> None:
        while True:
            try:
                await wait_for(self._stop.wait(), self._interval_s)
                return
            except TimeoutError:
                pass
            try:
                async with self._db.transaction() as conn:
                    alive = await heartbeat(conn, self._lease)
            except DatabaseUnavailable as exc:
                # The database being down is not proof the lease is gone; keep trying. If it stays down
                # past STALE_AFTER the reconciler rescues the document and the next beat sees the loss.
                log.warning("heartbeat.failed", document_id=str(self._lease.document_id), error=str(exc))
                continue
            self.beats += 1
            if not alive:
                self.lost = True
                log.warning("lease.lost", document_id=str(self._lease.document_id), epoch=self._lease.epoch)
                self._work.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def heartbeating(
    db: Database, lease: Lease, *, interval_s: float, work: asyncio.Task[object]
) -> AsyncIterator[Heartbeat]:
    """Heartbeat for as long as the block runs; stops last, after the work ended."""
    beat = Heartbeat(db, lease, interval_s=interval_s, work=work)
    task = asyncio.create_task(beat.run(), name=f"heartbeat:{lease.document_id}")
    try:
        yield beat
    finally:
        beat.stop()
        await task
