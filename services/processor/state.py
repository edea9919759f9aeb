"""What the processor's lifespan owns: clients, the worker, readiness and its side tasks."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog
from sqlalchemy import text

from services.processor.deletion import PurgeResult, purge_document
from services.processor.deps import ProcessorDeps
from services.processor.presence import Presence
from services.processor.registry import Registry
from services.processor.worker import Worker
from shared.aio import wait_for
from shared.embedding import Embedder

log = structlog.get_logger("kbingest.processor")

CHECK_TIMEOUT_S: Final = 15.0
CHECK_RETRY_S: Final = 2.0


@dataclass
class ProcessorState:
    deps: ProcessorDeps
    embedder: Embedder
    worker: Worker
    registry: Registry
    warm_up: Callable[[], Awaitable[None]]
    presence: Presence
    checks: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def not_ready_reason(self) -> str:
        if self.fatal:
            return f"stopping: {self.fatal}"
        if not self.worker.accepting:
            return "shutting down"
        failing = {k: v for k, v in self.checks.items() if v != "ok"}
        return "starting: " + (", ".join(f"{k} {v}" for k, v in failing.items()) or "checking dependencies")

    async def purge(self, event_id: uuid.UUID, event_type: str, document_id: uuid.UUID) -> PurgeResult:
        """Purge a deleting document; raises ``PurgeFailed`` (nothing recorded) while a store is down."""
        deps = self.deps
        return await purge_document(
            deps.db, deps.store, deps.vectors, event_id=event_id, event_type=event_type, document_id=document_id
        )

    async def _database(self) -> None:
        async with self.deps.db.connection() as conn:
            await conn.execute(text("SELECT 1"))
        # Never ready, so never claiming, without the lock that makes this process's death visible at once.
        await self.presence.ensure_held()
        if not self.registry.registered:
            await self.registry.register()

    async def _object_store(self) -> None:
        await self.deps.store.ensure_bucket()

    async def _vector_store(self) -> None:
        await self.deps.vectors.health()

    async def _embedder(self) -> None:
        await self.embedder.check()

    async def start_up(self) -> None:
        """Check every dependency with a deadline, say which one is missing, never hang."""
        steps: dict[str, Callable[[], Awaitable[None]]] = {
            "database": self._database,
            "object_store": self._object_store,
            "vector_store": self._vector_store,
            "embedder": self._embedder,
            "extractor": self.warm_up,
        }
        self.checks = dict.fromkeys(steps, "pending")
        while not self.ready:
            for name, step in steps.items():
                if self.checks[name] == "ok":
                    continue
                try:
                    await wait_for(step(), CHECK_TIMEOUT_S)
                    self.checks[name] = "ok"
                except Exception as exc:  # reported in /readyz and the log, retried
                    self.checks[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
                    log.warning("processor.dependency_unavailable", dependency=name, error=self.checks[name])
            if all(v == "ok" for v in self.checks.values()) and await self._marked_ready():
                self.ready = True
                self.became_ready.set()
                log.info("processor.ready", processor_id=self.registry.processor_id)
                return
            await asyncio.sleep(CHECK_RETRY_S)

    async def _marked_ready(self) -> bool:
        """Record readiness; the database may have gone away since its check (a restart): check it again."""
        try:
            await wait_for(self.registry.mark_ready(), CHECK_TIMEOUT_S)
        except Exception as exc:  # reported in /readyz and the log, retried (found by the fault campaign)
            self.checks["database"] = f"failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("processor.dependency_unavailable", dependency="database", error=self.checks["database"])
            return False
        return True

    async def work_loop(self) -> None:
        """Pull work once every dependency answered (a document claimed earlier would only fail)."""
        await self.became_ready.wait()
        await self.worker.run()

    async def liveness_loop(self) -> None:
        """Keep the processors row fresh so 'no processor alive' is visible to the pipeline."""
        while True:
            await asyncio.sleep(self.deps.settings.heartbeat_interval_s)
            if not self.registry.registered:
                continue
            try:
                await self.registry.touch()
            except Exception as exc:  # a missed beat is logged; the next one retries
                log.warning("processor.liveness_failed", error=str(exc))

    def supervise(self, task: asyncio.Task[None]) -> None:
        """A side task that dies takes the process down (never look alive while stalled)."""

        def _done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is None:
                return
            self.fatal = f"{t.get_name()} died: {t.exception()!r}"
            self.ready = False
            log.critical("processor.side_task_died", task=t.get_name(), error=repr(t.exception()))
            os.kill(os.getpid(), signal.SIGTERM)

        task.add_done_callback(_done)
        self.tasks.append(task)
