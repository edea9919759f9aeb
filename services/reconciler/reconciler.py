"""The reconciler loop: elect a leader, repair what crashes left behind, record the pass and the health."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import structlog
from prometheus_client import CollectorRegistry

from services.reconciler import generations, prune, repairs, samples, state
from services.reconciler.generation_purge import GenerationPurge
from services.reconciler.leader import Leadership
from services.reconciler.metrics import ReconcilerMetrics
from services.reconciler.presence_rescue import PresenceRescue
from services.reconciler.sweep import ObjectSweep
from services.reconciler.tombstones import TombstoneRepurge
from shared.aio import wait_for
from shared.db import Database, DatabaseUnavailable, worker_database
from shared.pipeline_health import pipeline_report
from shared.settings import Settings
from shared.storage import ObjectStore, StorageUnavailable

# A round of the object sweep (every page of the bucket) starts at most once a minute; its pages run each pass.
OBJECT_SWEEP_MIN_INTERVAL_S: Final = 60.0
# A queued/deleting document gets this many intervals for its event to be delivered before it is re-emitted.
GRACE_INTERVALS: Final = 2
# Not ready when no tick succeeded within this many intervals (and at least READY_MIN_WINDOW_S).
READY_INTERVALS: Final = 3
READY_MIN_WINDOW_S: Final = 30.0
APPLICATION_NAME: Final = "kbingest.reconciler"

log = structlog.get_logger("kbingest.reconciler")

Step = Callable[[], Awaitable[Counter[str]]]


def new_reconciler_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PassResult:
    """What one ``run_once`` did: whether it acted, its repairs by kind, the active alerts, failed steps."""

    leader: bool
    counts: dict[str, int]
    alerts: list[str]
    duration_s: float
    failed_steps: list[str] = field(default_factory=list)


class Reconciler:
    """Any number may run; the one holding the advisory lock acts, the others keep their gauges fresh."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        store: ObjectStore,
        leadership: Leadership,
        metrics: ReconcilerMetrics,
        step_overrides: Mapping[str, Step] | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._leadership = leadership
        self.metrics = metrics
        self.reconciler_id = leadership.identity
        self._stop = asyncio.Event()
        self.presence = PresenceRescue(
            leadership=leadership, db=db, metrics=metrics, restart_grace_s=settings.stale_after_s
        )
        self._tombstones = TombstoneRepurge(db, settings)
        self._generation_purge = GenerationPurge(db, settings)
        self._objects = ObjectSweep(
            db,
            store,
            leader_id=self.reconciler_id,
            grace_s=settings.orphan_grace_s,
            page_keys=settings.orphan_sweep_page_keys,
            min_round_s=max(OBJECT_SWEEP_MIN_INTERVAL_S, settings.reconcile_interval_s),
        )
        # Replaces named steps: how tests make one step fail and watch the others run.
        self._step_overrides = dict(step_overrides or {})
        self.last_ok_at: float | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry,
        reconciler_id: str | None = None,
        step_overrides: Mapping[str, Step] | None = None,
    ) -> Reconciler:
        """Two connections at most: the lock session, plus one NullPool connection for the work."""
        identity = reconciler_id or new_reconciler_id()
        db = worker_database(
            settings.database_url,
            service="reconciler",
            max_connections=1,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        return cls(
            settings=settings,
            db=db,
            store=ObjectStore.from_settings(settings),
            leadership=Leadership(
                settings.database_url, identity=identity, application_name=f"{APPLICATION_NAME}.leader"
            ),
            metrics=ReconcilerMetrics(registry),
            step_overrides=step_overrides,
        )

    @property
    def is_leader(self) -> bool:
        return self._leadership.is_leader

    @property
    def leadership(self) -> Leadership:
        return self._leadership

    @property
    def grace_s(self) -> float:
        return GRACE_INTERVALS * self._settings.reconcile_interval_s

    def _steps(self) -> list[tuple[str, Step]]:
        s = self._settings
        steps: list[tuple[str, Step]] = [
            ("stale", lambda: repairs.rescue_stale(self._db, stale_after_s=s.stale_after_s)),
            ("lost_event", lambda: repairs.reemit_lost(self._db, grace_s=self.grace_s)),
            ("stuck_delete", lambda: repairs.finish_stuck_deletes(self._db, grace_s=self.grace_s)),
            ("generations", lambda: generations.switch_idle_generations(self._db)),
            ("tombstones", self._tombstones.run),
            ("generation_purge", self._generation_purge.run),
            ("objects", self._objects.run),
            (
                "prune",
                lambda: prune.prune(
                    self._db, retention_s=s.outbox_retention_s, dead_retention_s=s.dead_letter_retention_s
                ),
            ),
            ("sample", lambda: samples.record_sample(self._db)),
        ]
        return [(name, self._step_overrides.get(name, step)) for name, step in steps]

    async def _repair(self) -> tuple[Counter[str], list[str]]:
        """Run every step; one that fails is logged, counted and reported, and the others still run."""
        counts: Counter[str] = Counter()
        failed: list[str] = []
        for name, step in self._steps():
            try:
                counts.update(await step())
            except (DatabaseUnavailable, StorageUnavailable) as exc:
                # An outage, not a bug: no traceback; the next pass retries.
                self._step_failed(failed, name)
                log.warning("reconciler.step_failed", step=name, error=str(exc)[:300])
            except Exception as exc:  # a bug in one step must not stop the other repairs; traceback logged
                self._step_failed(failed, name)
                log.exception("reconciler.step_failed", step=name, error=f"{type(exc).__name__}: {exc}"[:300])
        self.metrics.count_repairs(counts)
        return counts, failed

    def _step_failed(self, failed: list[str], name: str) -> None:
        failed.append(name)
        self.metrics.errors.labels(name).inc()

    async def run_once(self) -> PassResult:
        """One full pass: repairs and a recorded pass if this replica leads; the pipeline gauges either way."""
        started = time.monotonic()
        leader = await self._leadership.ensure()
        self.metrics.is_leader.set(1 if leader else 0)
        counts: Counter[str] = Counter()
        failed: list[str] = []
        if leader:
            counts, failed = await self._repair()
            async with self._db.transaction() as conn:
                await state.record_pass(
                    conn, leader_id=self.reconciler_id, duration_s=time.monotonic() - started, counts=counts
                )
        async with self._db.transaction() as conn:
            report = (await pipeline_report(conn, self._settings)).model_dump()
            if leader:
                await state.sync_alerts(conn, report["alerts"])
        self.metrics.observe_report(report)
        duration = time.monotonic() - started
        if leader:
            self.metrics.passes.inc()
            self.metrics.pass_duration.observe(duration)
            if counts:
                log.info("reconciler.pass", duration_ms=round(duration * 1000), **counts)
        self.last_ok_at, self.last_error = time.monotonic(), None
        alerts = [alert["code"] for alert in report["alerts"]]
        return PassResult(leader, dict(counts), alerts, duration, failed)

    async def run(self) -> None:
        """Pass, then wait one interval or ``stop()``, until stopped; a failed pass is logged and retried."""
        log.info("reconciler.running", reconciler_id=self.reconciler_id, interval_s=self._settings.reconcile_interval_s)
        # Between passes, the leader rescues a dead processor's documents within about a second.
        fast = asyncio.create_task(self.presence.run(self._stop), name="presence_rescue")
        try:
            while not self._stop.is_set():
                try:
                    await self.run_once()
                except DatabaseUnavailable as exc:
                    self.last_error = f"database unavailable: {exc}"[:300]
                    self.metrics.is_leader.set(0)
                    log.warning("reconciler.database_unavailable", error=self.last_error)
                except Exception as exc:  # logged with traceback, shown by /readyz, retried next tick
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.exception("reconciler.pass_failed", error=self.last_error)
                with contextlib.suppress(TimeoutError):
                    await wait_for(self._stop.wait(), self._settings.reconcile_interval_s)
        finally:
            fast.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fast
            await self._leadership.release()
            self.metrics.is_leader.set(0)

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Ready while the last successful tick is recent (the database answers and the loop turns)."""
        window = max(READY_MIN_WINDOW_S, READY_INTERVALS * self._settings.reconcile_interval_s)
        if self.last_ok_at is None:
            return False, self.last_error or "first pass not finished yet"
        age = time.monotonic() - self.last_ok_at
        if age > window:
            return False, f"no successful pass for {age:.0f} s: {self.last_error or 'loop stalled'}"
        return True, "ok"

    async def close(self) -> None:
        """Release the lock (a standby takes over at once) and dispose of the engine."""
        await self._leadership.release()
        await self._db.dispose()
