"""Rescue within about a second: between passes the leader looks for processors whose presence lock is gone.

A processor holds its lock (shared.presence) for its whole life, and Postgres frees it the moment the
process's session ends, so a missing lock is a dead process, not a slow one. A processor that is alive
but stuck (SIGSTOP, a hung call, a partition that keeps its socket open) still holds its lock; the stale
heartbeat rescue of the regular pass covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import structlog

from services.reconciler import repairs
from services.reconciler.leader import Leadership
from services.reconciler.metrics import ReconcilerMetrics
from shared import presence
from shared.aio import wait_for
from shared.db import Database, DatabaseUnavailable

# Two checks in a row must miss a lock before its documents are rescued: p99 about 2 × this after a kill.
CHECK_INTERVAL_S: Final = 0.5

log = structlog.get_logger("kbingest.reconciler")


@dataclass(kw_only=True, eq=False)
class PresenceRescue:
    """Requeues the documents of a processor whose lock was seen held, then missing in two checks in a row.

    Guards against rescuing live work: only keys this leader has seen held count (a processor that never
    took the lock, such as an older version during a rolling upgrade, is left to the stale path); a key must
    be missing twice, so a processor re-taking its lock after a dropped session is not rescued; and nothing
    is rescued within ``restart_grace_s`` of a Postgres start, while every processor re-takes its lock.
    The checks run on the leader's lock session: no connection is added, and only the leader checks.
    """

    leadership: Leadership
    db: Database
    metrics: ReconcilerMetrics
    restart_grace_s: float
    interval_s: float = CHECK_INTERVAL_S
    # Keys seen held in this term, and keys missing at the last check.
    _seen: set[int] = field(default_factory=set, init=False)
    _missing: set[int] = field(default_factory=set, init=False)

    async def check_once(self) -> Counter[str]:
        """One check (a single query) and the rescues it confirms; nothing while not leading."""
        row = await self.leadership.fetchrow_as_leader(presence.CHECK, presence.NAMESPACE)
        if row is None:
            # A new term starts from what it sees itself.
            self._seen, self._missing = set(), set()
            return Counter()
        self.metrics.presence_checks.inc()
        held = set(row["held"])
        owners = dict(zip(row["owners"], row["keys"], strict=True))
        missing = {key for key in owners.values() if key in self._seen and key not in held}
        # Forget keys that are gone and hold nothing: a processor id is never reused.
        self._seen = (self._seen & set(owners.values())) | held
        if row["uptime_s"] < self.restart_grace_s:
            self._missing = set()
            return Counter()
        confirmed, self._missing = missing & self._missing, missing
        gone = sorted(owner for owner, key in owners.items() if key in confirmed)
        if not gone:
            return Counter()
        counts = await repairs.rescue_orphaned(self.db, owners=gone)
        self.metrics.count_repairs(counts)
        return counts

    async def run(self, stop: asyncio.Event) -> None:
        """Check every interval until ``stop``; a failed check is logged and the next one retries."""
        while not stop.is_set():
            try:
                await self.check_once()
            except DatabaseUnavailable as exc:
                self.metrics.errors.labels("presence").inc()
                log.warning("reconciler.presence_check_failed", error=str(exc)[:300])
            except Exception:  # logged with its traceback; the stale path still covers the documents
                self.metrics.errors.labels("presence").inc()
                log.exception("reconciler.presence_check_failed")
            with contextlib.suppress(TimeoutError):
                await wait_for(stop.wait(), self.interval_s)
