"""What the campaign watches while it runs: services that die by themselves, Postgres connections per
process against the documented budget, and events that stay due without being delivered.

One thread, a few cheap reads a second. Connections are counted from the client side (each
process's established TCP connections to the Postgres port, psutil), so they are attributed to the
process that holds them, whatever ``application_name`` it set.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psutil

from shared.connection_budget import connection_budget, limits_from_env
from tests.support.chaos_stack import ChaosStack

TICK_S = 0.5
CONNECTIONS_EVERY_S = 1.0
OVERDUE_EVERY_S = 5.0
# An event may wait this long past its due time (Postgres restarts and relay restarts included).
OVERDUE_BOUND_S = 60.0

# How long each sendable event (the head of its aggregate: later ones wait for it by design) has been
# due: since its available_at, its lease's end (while a relay holds it), or since its predecessor was
# settled, whichever is later.
LATENESS = """
SELECT o.seq, o.id::text AS id, o.type, o.aggregate_id::text AS aggregate_id, o.attempts,
       extract(epoch FROM now() - greatest(o.available_at, o.leased_until, (
           SELECT max(coalesce(p.delivered_at, p.dead_at)) FROM outbox AS p
           WHERE p.aggregate_id = o.aggregate_id AND p.seq < o.seq)))::float8 AS late_s
FROM outbox AS o
WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.available_at < now()
  AND o.seq = (SELECT min(e.seq) FROM outbox AS e
               WHERE e.aggregate_id = o.aggregate_id AND e.delivered_at IS NULL AND e.dead_at IS NULL)
"""
OVERDUE = f"SELECT * FROM ({LATENESS}) AS h WHERE h.late_s > $1 ORDER BY h.late_s DESC LIMIT 20"
MAX_LATENESS = f"SELECT coalesce(max(h.late_s), 0)::float8 FROM ({LATENESS}) AS h"
SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'kbingest.%'"


def budget_for(stack: ChaosStack) -> dict[str, int]:
    """``doctor``'s connection budget (the one formula), for the settings the services run with."""
    return {name: service.total for name, service in connection_budget(limits_from_env(stack.env)).items()}


@dataclass
class Monitor:
    stack: ChaosStack
    lock: threading.Lock
    started_at: float
    budget: dict[str, int] = field(default_factory=dict)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    connection_violations: list[str] = field(default_factory=list)
    peak_per_service: dict[str, int] = field(default_factory=dict)
    peak_sessions: int = 0
    overdue: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_lateness_s: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.budget = budget_for(self.stack)
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        next_connections = next_overdue = 0.0
        try:
            while not self.stop.wait(TICK_S):
                self.watch_exits()
                now = time.monotonic()
                if now >= next_connections:
                    next_connections = now + CONNECTIONS_EVERY_S
                    self.count_connections()
                if now >= next_overdue:
                    next_overdue = now + OVERDUE_EVERY_S
                    loop.run_until_complete(self.read_database())
        finally:
            loop.close()

    def at(self) -> float:
        return round(time.monotonic() - self.started_at, 1)

    def watch_exits(self) -> None:
        """A service that ended without the campaign signalling it: a finding; restarted to go on."""
        with self.lock:
            for svc in self.stack.services.values():
                if svc.held or svc.proc is None or svc.proc.poll() is None:
                    continue
                self.unexpected_exits.append(
                    {"at_s": self.at(), "service": svc.name, "returncode": svc.proc.returncode, "log": svc.log_tail()}
                )
                svc.start()

    def count_connections(self) -> None:
        port = self.stack.postgres.port
        for svc in list(self.stack.services.values()):
            held = 0
            for proc in svc.tree():
                try:
                    held += sum(
                        1
                        for c in proc.net_connections(kind="tcp")
                        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                    )
                except psutil.Error:
                    continue
            self.peak_per_service[svc.name] = max(self.peak_per_service.get(svc.name, 0), held)
            limit = self.budget[svc.command]
            if held > limit:
                self.connection_violations.append(f"{self.at()} s: {svc.name} (pid {svc.pid}) held {held} > {limit}")

    async def read_database(self) -> None:
        try:
            conn = await asyncpg.connect(self.stack.pg_dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return  # Postgres is down: nothing to read, nothing can be late because of us
        try:
            self.peak_sessions = max(self.peak_sessions, int(await conn.fetchval(SESSIONS)))
            self.max_lateness_s = max(self.max_lateness_s, float(await conn.fetchval(MAX_LATENESS)))
            for row in await conn.fetch(OVERDUE, OVERDUE_BOUND_S):
                seen = self.overdue.setdefault(row["id"], {**dict(row), "first_seen_s": self.at()})
                seen["late_s"] = max(seen["late_s"], row["late_s"])
        except (OSError, asyncpg.PostgresError, TimeoutError):
            pass
        finally:
            await conn.close(timeout=5)
