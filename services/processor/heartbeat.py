"""Lease heartbeat around one unit of work: renews every interval, cancels the work if the lease is lost.

A renewal that raises is classified (``failure_kind``): the database being unreachable and server-side
conflicts that clear by themselves (deadlock, serialization failure, lock or statement timeout) are
retried at the next beat; anything else (a bad statement, a bug) will not fix itself, so the heartbeat
stops, flags ``error`` and cancels the work, and the worker fails the attempt with ``internal_error``
(retried with backoff) rather than working on without a renewed lease until the reconciler rescues it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Literal

import structlog
from prometheus_client import Counter
from sqlalchemy.exc import DBAPIError

from shared.aio import wait_for
from shared.db import Database, exception_chain, is_connection_error
from shared.lifecycle import Lease, heartbeat

log = structlog.get_logger("kbingest.processor.heartbeat")

# SQLSTATEs a renewal may hit while the lease is fine: serialization failure, deadlock, lock not
# available, statement timeout (the row was locked by a long transaction).
TRANSIENT_SQLSTATES: Final = frozenset({"40001", "40P01", "55P03", "57014"})

FailureKind = Literal["unavailable", "transient", "error"]


class LeaseLost(Exception):
    """Another holder took the document (epoch moved): stop and write nothing."""


def failure_kind(exc: BaseException) -> FailureKind:
    """Whether a failed renewal is worth retrying (``unavailable``, ``transient``) or ends the attempt."""
    if is_connection_error(exc):
        return "unavailable"
    for cause in exception_chain(exc):
        if isinstance(cause, DBAPIError) and getattr(cause.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return "transient"
    return "error"


@dataclass(kw_only=True, eq=False)
class Heartbeat:
    """Renews ``lease`` on its own connection budget; flags and cancels the work on loss or a hard error."""

    db: Database
    lease: Lease
    interval_s: float
    work: asyncio.Task[object]
    failures: Counter | None = None
    lost: bool = field(default=False, init=False)
    error: str | None = field(default=None, init=False)
    beats: int = field(default=0, init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    async def run(self) -> None:
        bound = log.bind(document_id=str(self.lease.document_id), epoch=self.lease.epoch)
        while True:
            try:
                await wait_for(self._stop.wait(), self.interval_s)
                return
            except TimeoutError:
                pass
            try:
                async with self.db.transaction() as conn:
                    alive = await heartbeat(conn, self.lease)
            except Exception as exc:  # classified below: retried, or the attempt stops; never a silent end
                kind = failure_kind(exc)
                if self.failures is not None:
                    self.failures.labels(kind).inc()
                error = f"{type(exc).__name__}: {exc}"[:500]
                if kind != "error":
                    # Not proof the lease is gone. If it lasts past STALE_AFTER the reconciler rescues the
                    # document and the next beat that gets through sees the loss.
                    bound.warning("heartbeat.failed", kind=kind, error=error)
                    continue
                self.error = error
                bound.error("heartbeat.error", kind=kind, error=error, exc_info=exc)
                self.work.cancel()
                return
            self.beats += 1
            if not alive:
                self.lost = True
                bound.warning("lease.lost")
                self.work.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def heartbeating(beat: Heartbeat) -> AsyncIterator[Heartbeat]:
    """Run ``beat`` for as long as the block runs; it stops last, after the work ended."""
    task = asyncio.create_task(beat.run(), name=f"heartbeat:{beat.lease.document_id}")
    try:
        yield beat
    finally:
        beat.stop()
        await task
