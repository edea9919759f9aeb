"""Two processor processes share one backlog; kill -9 of one leaves the other draining, nothing lost.

``kbingest up`` runs one processor; the test starts a second one next to it (same database, objects
and API, its own port) and lists both in the relay's routes, as ``up --processors 2`` would. The
second one is outside ``up``'s supervision, so killing it does not stop the stack. Short heartbeat
and stale settings let the reconciler rescue the killed one's documents within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import suppress

import pytest

from services.cli.localstack import routes_to_processors
from shared.settings import Settings
from tests.support import backlog, poll, servers
from tests.support.pipeline_helpers import start_cli, wait_http_ok
from tests.support.up_process import UpProcess, running_up

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("flow-two-processors")]

BACKLOG = 120
RESCUE = {"KBINGEST_HEARTBEAT_INTERVAL_S": "1", "KBINGEST_STALE_AFTER_S": "5", "KBINGEST_RECONCILE_INTERVAL_S": "1"}
BUSY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 300.0

# Who holds work right now, and whether work still waits behind it.
HOLDERS = """
    SELECT coalesce(array_agg(DISTINCT lease_owner) FILTER (WHERE status = 'processing'), '{}') AS owners,
           count(*) FILTER (WHERE status = 'queued') AS queued
    FROM documents WHERE knowledge_base_id = $1::uuid
"""
HELD_BY = "SELECT id::text AS id FROM documents WHERE status = 'processing' AND lease_owner = $1"
FINAL = """
    SELECT d.id::text AS id, d.status, d.attempts,
           count(a.*) FILTER (WHERE a.lease_owner = $2 AND a.started_at > to_timestamp($3)) AS by_survivor_after_kill
    FROM documents AS d LEFT JOIN document_attempts AS a ON a.document_id = d.id
    WHERE d.knowledge_base_id = $1::uuid GROUP BY d.id
"""


@pytest.fixture
def two_processors() -> Iterator[tuple[UpProcess, subprocess.Popen[bytes]]]:
    first, second = servers.free_port(), servers.free_port()
    routes = routes_to_processors(Settings(_env_file=None), [first, second])  # type: ignore[call-arg]
    with running_up(KBINGEST_PROCESSOR_PORT=str(first), KBINGEST_RELAY_ROUTES=json.dumps(routes), **RESCUE) as up:
        log = up.data_dir / "processor-second.log"
        proc = start_cli(["processor"], up.service_env(KBINGEST_PROCESSOR_PORT=str(second)), log)
        try:
            wait_http_ok(f"http://127.0.0.1:{second}/readyz", proc, log, timeout_s=240)
            yield up, proc
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _owner_pid(owner: str) -> int:
    """A processor id is ``host:pid:suffix``."""
    return int(owner.split(":")[1])


def test_both_processors_work_the_backlog_and_one_survives_the_others_kill(
    two_processors: tuple[UpProcess, subprocess.Popen[bytes]],
) -> None:
    up, second = two_processors
    with up.client() as client:
        kb = backlog.create_kb(client, "two-processors")
        ids, _batches = backlog.upload_batches(client, kb, backlog.small_documents(BACKLOG))

        def both_busy_with_work_waiting() -> list[str] | None:
            row = backlog.fetch(up.pg_dsn, HOLDERS, kb)[0]
            owners = list(row["owners"])
            return owners if len(owners) >= 2 and row["queued"] > 0 else None

        owners = poll.until(both_busy_with_work_waiting, timeout_s=BUSY_TIMEOUT_S, what="two busy processors")
        victim = next(o for o in owners if _owner_pid(o) == second.pid)
        survivor = next(o for o in owners if o != victim)
        killed_at = backlog.fetch(up.pg_dsn, "SELECT extract(epoch FROM now())::float8 AS t")[0]["t"]
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
        # Read after the kill: what it held when it died stays 'processing' until the stale rescue.
        held = {r["id"] for r in backlog.fetch(up.pg_dsn, HELD_BY, victim)}

        drained, _alerts = backlog.wait_drained(client, [kb], len(ids), DRAIN_TIMEOUT_S)
        assert drained, f"not drained: {backlog.kb_counts(client, kb)}\n{up.log_tail()}"
    final = {r["id"]: r for r in backlog.fetch(up.pg_dsn, FINAL, kb, survivor, killed_at)}
    not_ready = {i: r["status"] for i, r in final.items() if r["status"] != "ready"}
    assert not_ready == {}, not_ready
    assert backlog.dead_letters(up.pg_dsn, [kb]) == 0
    assert held, "the killed processor held nothing at the kill"
    # The killed one's documents came back (stale rescue) and were done again, by the survivor.
    assert all(final[i]["attempts"] >= 2 and final[i]["by_survivor_after_kill"] >= 1 for i in held), {
        i: final[i] for i in held
    }
    assert sum(r["by_survivor_after_kill"] for r in final.values()) > len(held)
