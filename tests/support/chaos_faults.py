"""The campaign's faults: a seeded plan, and an injector thread that applies it one fault at a time.

The plan depends on the seed alone (``random.Random(seed)``), so a failing run's fault sequence
replays exactly; what the services were doing when each fault landed does not (2 shared cores).
Faults are sequential: each is injected, held, healed, then a random gap; the workload and every
service's own recovery run concurrently with them.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.support.chaos_stack import ChaosStack, Service

# (kind, weight): how often each fault is drawn.
KINDS: tuple[tuple[str, int], ...] = (
    ("sigkill api", 3),
    ("sigterm api", 2),
    ("sigkill relay", 3),
    ("sigterm relay", 2),
    ("sigkill processor", 4),
    ("sigterm processor", 2),
    ("sigkill extraction server", 3),
    ("sigterm extraction server", 1),
    ("sigstop processor", 2),
    ("sigkill reconciler", 2),
    ("sigterm reconciler", 1),
    ("postgres restart fast", 2),
    ("postgres restart immediate", 2),
    ("pg_terminate_backend", 3),
    ("object store down", 2),
    ("vector store down", 2),
    ("garbage subscriber", 2),
)
RECOVERY_TIMEOUT_S = 120.0
PROBE_KB = "chaos-probe"


@dataclass(frozen=True)
class Fault:
    kind: str
    # Which of several processors (index), or how many sessions to terminate.
    pick: int
    # Restart delay of a killed process, or how long an outage / stop / garbage spell lasts.
    hold_s: float
    gap_s: float


@dataclass
class FaultRecord:
    at_s: float
    kind: str
    target: str
    hold_s: float
    note: str = ""
    # Postgres restarts: seconds from "accepting connections" to every service ready, and to a probe document indexed.
    ready_s: float | None = None
    flow_s: float | None = None


def plan(seed: int, *, long_run: bool, only: str = "") -> Iterator[Fault]:
    """An endless seeded fault sequence; long runs hold outages longer (up to the issue's 30 s).

    ``only`` (comma-separated words, ``CHAOS_FAULTS``) keeps the kinds containing one of them.
    """
    rng = random.Random(seed)
    words = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [(k, w) for k, w in KINDS if not words or any(word in k for word in words)]
    if not chosen:
        raise ValueError(f"CHAOS_FAULTS={only!r} matches no fault kind: {[k for k, _ in KINDS]}")
    kinds = [k for k, _ in chosen]
    weights = [w for _, w in chosen]
    outage = (10.0, 30.0) if long_run else (5.0, 15.0)
    gap = (2.0, 10.0) if long_run else (1.0, 4.0)
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind.startswith(("object", "vector", "garbage")):
            hold = rng.uniform(*outage)
        elif kind == "sigstop processor":
            hold = rng.uniform(3.0, 6.0)  # past STALE_AFTER_S (added to it when applied)
        elif kind.startswith("postgres"):
            hold = rng.uniform(0.2, 2.0)
        else:
            hold = rng.uniform(0.5, 4.0)
        yield Fault(kind, rng.randrange(1 << 16), round(hold, 2), round(rng.uniform(*gap), 2))


@dataclass
class Injector:
    """Applies a plan on its own thread until ``deadline``; heals everything on the way out."""

    stack: ChaosStack
    stale_after_s: float
    probe: Callable[[], str | None]
    probe_ready: Callable[[str], bool]
    started_at: float = field(default_factory=time.monotonic)
    records: list[FaultRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    errors: list[str] = field(default_factory=list)

    def run(self, faults: Iterator[Fault], deadline: float) -> None:
        for fault in faults:
            if self.stop.is_set() or time.monotonic() >= deadline:
                break
            try:
                self.apply(fault)
            except Exception as exc:  # the harness failed, not the product: reported as such
                self.errors.append(f"{self.now()} s {fault.kind}: {type(exc).__name__}: {exc}")
                self.heal()
            last = self.records[-1]
            print(  # noqa: T201 - the fault sequence as it happens, for whoever watches a long run
                f"[chaos] {last.at_s:7.1f} s  {last.kind} → {last.target} ({last.hold_s} s) {last.note}", flush=True
            )
            self.stop.wait(fault.gap_s)

    def now(self) -> float:
        return round(time.monotonic() - self.started_at, 1)

    def apply(self, fault: Fault) -> None:
        kind, target = fault.kind, fault.kind.rsplit(" ", 1)[-1]
        record = FaultRecord(self.now(), kind, target, fault.hold_s)
        with self.lock:
            self.records.append(record)
        if kind.startswith(("sigkill", "sigterm")) and target in ("api", "relay", "processor", "reconciler"):
            svc = self._service(target, fault.pick)
            record.target = svc.name
            self._kill_and_restart(svc, signal.SIGKILL if kind.startswith("sigkill") else signal.SIGTERM, fault.hold_s)
        elif kind.endswith("extraction server"):
            svc = self._service("processor", fault.pick)
            server = svc.extraction_server()
            record.target, record.hold_s = f"{svc.name} extraction server", 0.0
            if server is None:
                record.note = "no extraction server running (processor starting)"
            else:
                server.send_signal(signal.SIGKILL if kind.startswith("sigkill") else signal.SIGTERM)
        elif kind == "sigstop processor":
            svc = self._service("processor", fault.pick)
            record.target = svc.name
            svc.signal(signal.SIGSTOP)
            self.stop.wait(self.stale_after_s + fault.hold_s)
            svc.signal(signal.SIGCONT)
            record.hold_s = round(self.stale_after_s + fault.hold_s, 2)
        elif kind.startswith("postgres restart"):
            self._restart_postgres(record, "fast" if kind.endswith("fast") else "immediate", fault.hold_s)
        elif kind == "pg_terminate_backend":
            record.target, record.hold_s = "postgres", 0.0
            record.note = asyncio.run(_terminate_sessions(self.stack.pg_dsn, 1 + fault.pick % 5, fault.pick))
        elif kind == "object store down":
            record.target = "nanio"
            self.stack.stop_s3()
            self.stop.wait(fault.hold_s)
            self.stack.restart_s3()
        elif kind == "vector store down":
            record.target = "processors → vector store"
            self.stack.vector_proxy.set_cut(True)
            self.stop.wait(fault.hold_s)
            self.stack.vector_proxy.set_cut(False)
        elif kind == "garbage subscriber":
            record.target = "informational subscriber"
            _control(self.stack, spell=True, rate=0.8)
            self.stop.wait(fault.hold_s)
            _control(self.stack, spell=False)
        else:
            raise AssertionError(f"unknown fault {kind}")

    def _service(self, role: str, pick: int) -> Service:
        if role == "processor":
            processors = self.stack.processors()
            return processors[pick % len(processors)]
        return self.stack.services[role]

    def _kill_and_restart(self, svc: Service, sig: signal.Signals, delay_s: float) -> None:
        with self.lock:
            svc.held = True
        svc.signal(signal.SIGCONT)
        svc.signal(sig)
        svc.wait_exit()
        self.stop.wait(delay_s)
        with self.lock:
            svc.start()

    def _restart_postgres(self, record: FaultRecord, mode: str, down_s: float) -> None:
        record.target = "postgres"
        pg = self.stack.postgres
        pg.stop(mode)
        time.sleep(down_s)
        pg.start()
        back = time.monotonic()
        deadline = back + RECOVERY_TIMEOUT_S
        with httpx.Client() as client:
            while not all(s.ready(client) for s in self.stack.services.values() if s.alive()):
                if time.monotonic() > deadline:
                    record.note = "services not ready again within the recovery timeout"
                    return
                time.sleep(0.1)
        record.ready_s = round(time.monotonic() - back, 2)
        doc = None
        while doc is None and time.monotonic() < deadline:
            doc = self.probe()
        while doc is not None and time.monotonic() < deadline:
            if self.probe_ready(doc):
                record.flow_s = round(time.monotonic() - back, 2)
                return
            time.sleep(0.1)
        record.note = "probe document not indexed within the recovery timeout"

    def heal(self) -> None:
        """Undo whatever a fault left behind (called after the run, also on failure)."""
        self.stack.vector_proxy.set_cut(False)
        _control(self.stack, spell=False)
        if not self.stack.postgres.running():
            self.stack.postgres.start()
        self.stack.restart_s3()
        for svc in self.stack.services.values():
            svc.signal(signal.SIGCONT)


def _control(stack: ChaosStack, **values: Any) -> None:
    try:
        httpx.post(f"{stack.subscriber_url}/control", json=values, timeout=5).raise_for_status()
    except httpx.HTTPError:
        pass


async def _terminate_sessions(dsn: str, count: int, pick: int) -> str:
    """``pg_terminate_backend`` of ``count`` kbingest sessions drawn by ``pick``; says which."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE application_name LIKE 'kbingest.%' AND pid <> pg_backend_pid() ORDER BY pid"
        )
        victims = random.Random(pick).sample(list(rows), min(count, len(rows)))
        for row in victims:
            await conn.execute("SELECT pg_terminate_backend($1)", row["pid"])
        return ", ".join(sorted(r["application_name"] for r in victims)) or "no session"
    finally:
        await conn.close()
