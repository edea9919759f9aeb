"""Two real ``kbingest reconciler`` processes: one leads; SIGKILL it and the standby takes over and repairs."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support import servers
from tests.support.pipeline_helpers import (
    claim,
    create_document,
    create_kb,
    execute,
    fetch,
    fetch_one,
    service_env,
    start_cli,
    stop_process,
    wait_http_ok,
)
from tests.support.poll import eventually

pytestmark = pytest.mark.e2e

INTERVAL_S = 0.5


@pytest.fixture
def reconcilers(settings: Settings, tmp_path: Path) -> Iterator[dict[int, tuple[subprocess.Popen[bytes], int]]]:
    """pid → (process, port) for two replicas with half-second passes."""
    started: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
    for n in range(2):
        port = servers.free_port()
        env = service_env(
            settings,
            KBINGEST_RECONCILER_PORT=str(port),
            KBINGEST_RECONCILE_INTERVAL_S=str(INTERVAL_S),
            KBINGEST_HEARTBEAT_INTERVAL_S="1",
            KBINGEST_STALE_AFTER_S="3",
        )
        log = tmp_path / f"reconciler-{n}.log"
        proc = start_cli(["reconciler"], env, log)
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, log)
        started[proc.pid] = (proc, port)
    yield started
    for proc, _ in started.values():
        stop_process(proc)


def _is_leader(port: int) -> bool:
    return "kbingest_reconciler_is_leader 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


async def _leader_pid(db: Database) -> int | None:
    rows = await fetch(db, "SELECT leader_id FROM reconciler_state")
    return int(rows[0]["leader_id"].split(":")[1]) if rows else None


async def test_sigkill_of_the_leader_hands_over_to_the_standby(
    db: Database, store: ObjectStore, reconcilers: dict[int, tuple[subprocess.Popen[bytes], int]]
) -> None:
    first = await eventually(lambda: _leader_pid(db), timeout_s=60)
    leader, leader_port = reconcilers[first]
    standby_pid = next(pid for pid in reconcilers if pid != first)
    standby, standby_port = reconcilers[standby_pid]
    assert _is_leader(leader_port) and not _is_leader(standby_port)
    passes = (await fetch_one(db, "SELECT passes FROM reconciler_state"))["passes"]

    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=30)
    killed_at = time.monotonic()

    async def taken_over() -> bool:
        return await _leader_pid(db) == standby_pid

    await eventually(taken_over, timeout_s=60, every_s=0.05)
    takeover_s = time.monotonic() - killed_at
    assert _is_leader(standby_port)
    # Generous bound on "within one interval": the lock frees when the session dies, the standby tries every pass.
    assert takeover_s < 15, f"takeover took {takeover_s:.1f}s"
    assert (await fetch_one(db, "SELECT passes FROM reconciler_state"))["passes"] > passes

    # The new leader does the work: a processor dies holding a lease; the document is rescued.
    kb = await create_kb(db)
    doc = await create_document(db, store, kb)
    await claim(db, doc, owner="killed-processor")
    await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '1 minute' WHERE id = :id", id=doc)

    async def rescued() -> bool:
        row = await fetch_one(db, "SELECT status FROM documents WHERE id = :id", id=doc)
        return row["status"] == "queued"

    await eventually(rescued, timeout_s=60)
    assert standby.poll() is None


async def test_sigterm_releases_the_lock_for_an_immediate_takeover(
    db: Database, reconcilers: dict[int, tuple[subprocess.Popen[bytes], int]]
) -> None:
    first = await eventually(lambda: _leader_pid(db), timeout_s=60)
    leader, _ = reconcilers[first]
    standby_pid = next(pid for pid in reconcilers if pid != first)

    assert stop_process(leader) in (0, -15)

    async def taken_over() -> bool:
        return await _leader_pid(db) == standby_pid

    await eventually(taken_over, timeout_s=60, every_s=0.05)
