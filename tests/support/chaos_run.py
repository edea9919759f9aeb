"""One fault campaign end to end: stack up, workload and faults for the window, heal, settle, sweep, check.

``run_campaign(seed, duration_s)`` returns the report; artifacts (table, fault log, findings, and the
services' logs when something was found) go to ``test-artifacts/chaos/<seed>/``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import asyncpg
import httpx

from services.reconciler.tombstones import settle_s as repurge_settle_s
from tests.support import servers
from tests.support.chaos_checker import check, read_points, settings_for, store_for
from tests.support.chaos_faults import PROBE_KB, Fault, Injector, plan
from tests.support.chaos_monitor import Monitor
from tests.support.chaos_report import Report
from tests.support.chaos_stack import TUNING, ChaosStack, chaos_stack
from tests.support.chaos_workload import Ledger, Workload, probe_upload

ARTIFACTS = servers.ROOT / "test-artifacts" / "chaos"
PENDING = """
SELECT (SELECT count(*) FROM documents
        WHERE deleted_at IS NULL AND status IN ('queued', 'processing', 'deleting')) AS documents,
       (SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL) AS events
"""
LAST_PASS = "SELECT pass_started_at, pass_finished_at FROM reconciler_state WHERE name = 'reconciler'"
# Seconds until the newest tombstone or failure is settled for its re-purge (services/reconciler/tombstones.py).
REPURGE_DUE = """
SELECT COALESCE(extract(epoch FROM greatest(
    (SELECT max(deleted_at) FROM documents),
    (SELECT max(finished_at) FROM document_attempts WHERE outcome = 'failed'))
  + make_interval(secs => $1) - now()), 0)::float8 AS due_in_s
"""


def log(message: str) -> None:
    print(f"[chaos] {message}", flush=True)  # noqa: T201 - the seed and progress must reach the console


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` → seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def run_campaign(seed: int, duration_s: float, *, long_run: bool = False, only: str = "") -> Report:
    replay = f"SEED={seed} make chaos DURATION={duration_s:.0f}s" + (f" CHAOS_FAULTS={only}" if only else "")
    log(f"SEED={seed} DURATION={duration_s:.0f}s (replay: {replay})")
    began = time.monotonic()
    stale_after_s = float(TUNING["KBINGEST_STALE_AFTER_S"])
    settle_s = 240.0 if long_run else 90.0
    with chaos_stack(seed) as stack:
        log(f"stack ready in {time.monotonic() - began:.0f} s: " + ", ".join(stack.services))
        ledger = Ledger()
        probe_kb = _create_kb(stack, PROBE_KB)
        ledger.kbs[probe_kb] = None
        injector = Injector(
            stack,
            stale_after_s,
            probe=lambda: probe_upload(stack.api_url, stack.api_key, probe_kb, ledger),
            probe_ready=lambda doc: _document_status(stack, doc) == "ready",
            started_at=ledger.started,
        )
        monitor = Monitor(stack, injector.lock, ledger.started)
        monitor.start()
        try:
            workload = Workload(stack.api_url, stack.api_key, seed, ledger, probe_kb)
            _fault_window(injector, workload, plan(seed, long_run=long_run, only=only), duration_s)
            _restart_missing(stack, injector.lock)
            stack.wait_ready()
            log(f"settled: {_settle(stack, settle_s)}")
            _final_sweep(stack, injector.lock)
        finally:
            monitor.close()
        record = httpx.get(f"{stack.subscriber_url}/record", timeout=30).json()
        api = stack.services["api"]
        api.held = True
        api.signal(signal.SIGTERM)
        api.wait_exit()
        points = read_points(stack.qdrant_path)
        findings = check(
            dsn=stack.pg_dsn,
            env=stack.env,
            points=points,
            ledger=ledger,
            subscriber_record=record,
            garbage_url=f"{stack.subscriber_url}/garbage/v1/events",
            audit_url=f"{stack.subscriber_url}/audit/v1/events",
        )
        report = Report(
            seed=seed,
            duration_s=duration_s,
            wall_s=time.monotonic() - began,
            faults=injector.records,
            findings=findings,
            monitor={
                "budget": monitor.budget,
                "peak_per_service": monitor.peak_per_service,
                "peak_sessions": monitor.peak_sessions,
                "connection_violations": monitor.connection_violations,
                "unexpected_exits": monitor.unexpected_exits,
                "overdue_during_run": list(monitor.overdue.values()),
                "max_lateness_s": monitor.max_lateness_s,
            },
            ledger={
                "searches": ledger.searches,
                "search_violations": ledger.search_violations,
                "answers": dict(ledger.answers),
                "ambiguous_uploads": len(ledger.ambiguous),
                "notes": ledger.notes,
                "kbs": len(ledger.kbs),
                "kbs_deleted": sum(1 for t in ledger.kbs.values() if t is not None),
                "documents_deleted": sum(1 for d in ledger.snapshot() if d.deleted_s is not None),
            },
            harness_errors=injector.errors,
        )
        for row in monitor.overdue.values():
            findings.add(
                "event overdue",
                f"during the run: {row['type']} {row['id']} of {row['aggregate_id']}, {row['late_s']:.0f} s late "
                f"(first seen at {row['first_seen_s']} s)",
            )
        _write_artifacts(stack, report)
    return report


def _fault_window(injector: Injector, workload: Workload, faults: Iterator[Fault], duration_s: float) -> None:
    """Workload and faults side by side for ``duration_s``; the fault under way is finished, then all healed.

    On any failure the injector is stopped and joined before the stack goes down, so it cannot
    restart a service behind the stack's back.
    """
    deadline = time.monotonic() + duration_s
    thread = threading.Thread(target=injector.run, args=(faults, deadline), name="chaos-faults", daemon=True)
    thread.start()
    try:
        asyncio.run(_until(workload, deadline))
        log(f"fault window over after {len(injector.records)} faults; healing")
        thread.join(timeout=300)
    finally:
        injector.stop.set()
        thread.join(timeout=180)
        injector.heal()


async def _until(workload: Workload, deadline: float) -> None:
    task = asyncio.create_task(workload.run())
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    workload.stop.set()
    await asyncio.wait_for(task, timeout=120)


def _create_kb(stack: ChaosStack, name: str) -> str:
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}) as client:
        response = client.post("/v1/knowledge-bases", json={"name": name}, timeout=30)
    response.raise_for_status()
    return str(response.json()["id"])


def _document_status(stack: ChaosStack, doc: str) -> str | None:
    try:
        response = httpx.get(
            f"{stack.api_url}/v1/documents/{doc}", headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=10
        )
    except httpx.HTTPError:
        return None
    return str(response.json().get("status")) if response.status_code == 200 else None


def _restart_missing(stack: ChaosStack, lock: threading.Lock) -> None:
    """A fault that failed half-way may have left a service down: bring every one back before settling."""
    with lock:
        for svc in stack.services.values():
            if not svc.alive():
                svc.start()


def _poll_db(dsn: str, sql: str, *args: object) -> Any:
    async def read() -> Any:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchrow(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(read())


def _settle(stack: ChaosStack, timeout_s: float) -> dict[str, int]:
    """Wait until no document is in flight and no event is pending (or the timeout: then the checker says what)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, int] = {}
    while time.monotonic() < deadline:
        with suppress(OSError, asyncpg.PostgresError, TimeoutError):
            last = dict(_poll_db(stack.pg_dsn, PENDING))
            if not any(last.values()):
                break
        time.sleep(1.0)
    return last


def _final_sweep(stack: ChaosStack, lock: threading.Lock) -> None:
    """Let every object age past ORPHAN_GRACE_S, then restart the reconciler: its first pass sweeps.

    The sweep runs at most once a minute; a restart is how the campaign gets one now instead of
    waiting (it is also one more reconciler restart, which must change nothing).
    """
    grace_s = float(TUNING["KBINGEST_ORPHAN_GRACE_S"])
    objects = asyncio.run(store_for(stack.env).list("kb/"))
    newest = max((o.last_modified.timestamp() for o in objects if o.last_modified), default=0.0)
    time.sleep(max(0.0, newest + grace_s + 1.0 - time.time()))
    # The points of the newest tombstone or failure are re-purged once no late write can land any more.
    repurge_in_s = _poll_db(stack.pg_dsn, REPURGE_DUE, repurge_settle_s(settings_for(stack.env)))["due_in_s"]
    time.sleep(max(0.0, repurge_in_s + 1.0))
    restarted_at = _poll_db(stack.pg_dsn, "SELECT now() AS now")["now"]
    reconciler = stack.services["reconciler"]
    with lock:
        reconciler.held = True
        reconciler.signal(signal.SIGTERM)
        reconciler.wait_exit()
        reconciler.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with suppress(OSError, asyncpg.PostgresError, TimeoutError):
            row = _poll_db(stack.pg_dsn, LAST_PASS)
            if (
                row
                and row["pass_started_at"]
                and row["pass_started_at"] > restarted_at
                and row["pass_finished_at"]
                and (row["pass_finished_at"] > row["pass_started_at"])
            ):
                return
        time.sleep(0.5)
    log("the restarted reconciler finished no pass within 120 s")


def _write_artifacts(stack: ChaosStack, report: Report) -> None:
    out = ARTIFACTS / str(report.seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "report.md").write_text(report.table() + "\n\n" + report.violations() + "\n")
    (out / "faults.txt").write_text(report.fault_log() + "\n")
    (out / "report.json").write_text(json.dumps(report.as_json(), indent=1, default=str))
    if report.violations():
        for path in stack.root.glob("*.log"):
            shutil.copy(path, out / path.name)
        with suppress(OSError):
            shutil.copy(stack.postgres.data_dir / "server.log", out / "postgres.log")
    log(f"artifacts in {out}")


def summary(report: Report, emit: Callable[[str], None] = log) -> None:
    emit("fault sequence:\n" + report.fault_log())
    emit("result:\n" + report.table())
    if report.violations():
        emit("violations:\n" + report.violations())
