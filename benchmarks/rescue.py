"""Rescue latency: kill -9 a processor holding a lease → the reconciler requeues the document.

Each holder is a real process that claims one document through ``lifecycle.claim`` and heartbeats it;
it is SIGKILLed at a random moment and the time until the document is back in ``queued`` is measured.
Three configurations: the stale-heartbeat path with the defaults (heartbeat 5 s, stale 30 s, interval
10 s) and tuned (2 s, 10 s, 2 s), and "instant": the defaults with holders that also hold their presence
lock, as processors do (services/processor/presence.py), so the reconciler's presence check rescues
them. For "instant" it also measures what that check costs Postgres: queries/s, time per check, and
connections added.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
from sqlalchemy import text

from benchmarks.support import ROOT, Stack, embedded_stack, free_port, kbingest_process, percentile, table
from services.processor.presence import APPLICATION_NAME as PRESENCE_APP
from services.processor.presence import PING_INTERVAL_S, Presence
from shared import lifecycle, presence
from shared.db import Database, asyncpg_dsn, worker_database
from shared.storage import ObjectStore, object_key

P99_TARGET_S = {"tuned": 15.0, "instant": 2.0}
# Timing the presence check: this many runs on a connection of the benchmark's own.
CHECK_SAMPLES = 200
# How long the presence check's rate and the connections are watched.
LOAD_WINDOW_S = 10.0


@dataclass(frozen=True)
class Config:
    name: str
    heartbeat_s: float
    stale_s: float
    interval_s: float
    presence: bool = False

    def env(self) -> dict[str, str]:
        return {
            "KBINGEST_HEARTBEAT_INTERVAL_S": str(self.heartbeat_s),
            "KBINGEST_STALE_AFTER_S": str(self.stale_s),
            "KBINGEST_RECONCILE_INTERVAL_S": str(self.interval_s),
        }


CONFIGS = (
    Config("default", 5.0, 30.0, 10.0),
    Config("tuned", 2.0, 10.0, 2.0),
    Config("instant", 5.0, 30.0, 10.0, presence=True),
)


@dataclass
class Load:
    """What the presence check costs Postgres (the "instant" configuration)."""

    checks_per_s: float = float("nan")
    check_ms: dict[str, float] = field(default_factory=dict)
    presence_connections: int = 0
    processors: int = 0
    reconciler_connections: int = 0


async def _hold(document_id: uuid.UUID, with_presence: bool) -> None:
    """The simulated processor: (take its presence lock,) claim, then heartbeat until killed."""
    heartbeat_s = float(os.environ["KBINGEST_HEARTBEAT_INTERVAL_S"])
    url = os.environ["KBINGEST_DATABASE_URL"]
    owner = f"bench-holder:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lock = Presence(url, owner)
    holding = asyncio.create_task(lock.run(), name="presence") if with_presence else None
    if holding is not None:
        await lock.ensure_held(timeout_s=60)
    db = worker_database(url, service="bench.holder", max_connections=1)
    async with db.transaction() as conn:
        lease = await lifecycle.claim(conn, document_id, owner=owner)
    if lease is None:
        raise SystemExit(f"could not claim {document_id}")
    print("claimed", flush=True)
    while True:
        if holding is not None and holding.done():
            raise SystemExit(f"presence task ended: {holding!r}")
        async with db.transaction() as conn:
            if not await lifecycle.heartbeat(conn, lease):
                raise SystemExit("lease lost")
        await asyncio.sleep(heartbeat_s)


async def _documents(db: Database, store: ObjectStore, n: int) -> list[uuid.UUID]:
    kb = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(text("INSERT INTO knowledge_bases (id, name) VALUES (:id, :n)"), {"id": kb, "n": kb.hex})
    ids = []
    for _ in range(n):
        doc = uuid.uuid4()
        body = doc.bytes
        await store.put_bytes(object_key(kb, doc), body, content_type="text/plain")
        values = {
            "id": doc,
            "knowledge_base_id": kb,
            "batch_id": None,
            "filename": f"{doc}.txt",
            "original_filename": f"{doc}.txt",
            "media_type": "text/plain",
            "size_bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "object_key": object_key(kb, doc),
            "priority": "normal",
            "max_attempts": 1000,
        }
        async with db.transaction() as conn:
            await lifecycle.create_document(conn, values=values)
        ids.append(doc)
    return ids


async def _metric(reconciler_url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        body = (await client.get(f"{reconciler_url}/metrics")).text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _load(dsn: str, reconciler_url: str, holders: int) -> Load:
    """Cost of the presence check with ``holders`` processors holding locks and documents."""
    load = Load(processors=holders)
    conn = await asyncpg.connect(dsn)
    try:
        checks, started = await _metric(reconciler_url, "kbingest_reconciler_presence_checks_total"), time.monotonic()
        reconciler_max = 0
        while time.monotonic() - started < LOAD_WINDOW_S:
            reconciler_max = max(
                reconciler_max,
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'kbingest.reconciler%'"
                ),
            )
            await asyncio.sleep(0.05)
        load.checks_per_s = (await _metric(reconciler_url, "kbingest_reconciler_presence_checks_total") - checks) / (
            time.monotonic() - started
        )
        load.reconciler_connections = reconciler_max
        load.presence_connections = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", PRESENCE_APP
        )
        samples = []
        for _ in range(CHECK_SAMPLES):
            t0 = time.perf_counter()
            await conn.fetchrow(presence.CHECK, presence.NAMESPACE)
            samples.append(time.perf_counter() - t0)
        load.check_ms = {"p50": percentile(samples, 50) * 1000, "p99": percentile(samples, 99) * 1000}
    finally:
        await conn.close()
    return load


async def _measure(
    stack: Stack, config: Config, kills: int, rng: random.Random, reconciler_url: str
) -> tuple[list[float], Load | None]:
    env = {**stack.env, **config.env()}
    db = worker_database(env["KBINGEST_DATABASE_URL"], service="bench", max_connections=2)
    dsn = asyncpg_dsn(env["KBINGEST_DATABASE_URL"])
    store = ObjectStore(
        endpoint=stack.s3.endpoint, access_key="bench", secret_key="bench-secret-key", bucket="kbingest", secure=False
    )
    await store.ensure_bucket()
    load: Load | None = None
    try:
        docs = await _documents(db, store, kills)
        holders = []
        for doc in docs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.rescue",
                "--hold",
                str(doc),
                *(["--presence"] if config.presence else []),
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            holders.append(proc)
        for proc in holders:
            assert proc.stdout is not None
            line = b"-"
            while line and line.strip() != b"claimed":  # log lines may come first
                line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if not line:
                raise RuntimeError("a holder exited before claiming")
        if config.presence:
            await _wait_all_seen(db, reconciler_url, config.stale_s)
            load = await _load(dsn, reconciler_url, len(holders))
        # Kill at random moments, so heartbeat and reconciler phases are both sampled.
        window = 2 * max(config.interval_s, config.heartbeat_s)
        offsets = sorted(rng.uniform(0, window) for _ in docs)
        killed: dict[uuid.UUID, float] = {}
        rescued: dict[uuid.UUID, float] = {}
        started = time.monotonic()
        pending = dict(zip(docs, holders, strict=True))
        while len(rescued) < len(docs):
            now = time.monotonic()
            for (doc, proc), offset in zip(list(pending.items()), offsets[len(killed) :], strict=False):
                if now - started < offset:
                    break
                proc.send_signal(signal.SIGKILL)
                killed[doc] = time.monotonic()
                del pending[doc]
            async with db.transaction() as conn:
                rows = await conn.execute(
                    text("SELECT id FROM documents WHERE id = ANY(:ids) AND status = 'queued'"),
                    {"ids": [d for d in killed if d not in rescued]},
                )
                for (doc,) in rows:
                    rescued[doc] = time.monotonic()
            if now - started > window + 10 * (config.stale_s + config.interval_s):
                raise RuntimeError(f"{len(docs) - len(rescued)} documents never rescued")
            await asyncio.sleep(0.05)
        for proc in holders:
            await proc.wait()
        return [rescued[d] - killed[d] for d in docs], load
    finally:
        await db.dispose()


async def _wait_all_seen(db: Database, reconciler_url: str, grace_s: float) -> None:
    """Past the restart grace, then two checks since every holder took its lock: each was seen held."""

    async def past_grace() -> bool:
        async with db.transaction() as conn:
            uptime = await conn.execute(text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())"))
            return float(uptime.scalar_one()) > grace_s

    await _until(past_grace, "Postgres past the restart grace", timeout_s=grace_s + 60)
    first = await _metric(reconciler_url, "kbingest_reconciler_presence_checks_total")
    await _until(lambda: _checks_past(reconciler_url, first + 2), "two presence checks as leader")


async def _checks_past(reconciler_url: str, count: float) -> bool:
    return await _metric(reconciler_url, "kbingest_reconciler_presence_checks_total") >= count


def _run_config(stack: Stack, config: Config, kills: int, rng: random.Random) -> tuple[list[float], Load | None]:
    port = free_port()
    env = {**stack.env, **config.env(), "KBINGEST_RECONCILER_PORT": str(port)}
    reconciler = kbingest_process("reconciler", env)
    try:
        return asyncio.run(_measure(stack, config, kills, rng, f"http://127.0.0.1:{port}"))
    finally:
        reconciler.terminate()
        reconciler.wait(timeout=60)


def _load_table(load: Load) -> str:
    return table(
        [
            "processors",
            "presence checks/s (reconciler leader)",
            "check p50 ms",
            "check p99 ms",
            "pings/s per processor (PING_INTERVAL_S)",
            "connections added",
            "reconciler connections",
        ],
        [
            [
                load.processors,
                f"{load.checks_per_s:.2f}",
                f"{load.check_ms['p50']:.2f}",
                f"{load.check_ms['p99']:.2f}",
                f"{1 / PING_INTERVAL_S:g}",
                f"{load.presence_connections} (1 per processor), 0 on the reconciler",
                load.reconciler_connections,
            ]
        ],
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 kills per configuration instead of 20")
    parser.add_argument("--kills", type=int, default=None, help="kills per configuration")
    parser.add_argument(
        "--config", choices=[c.name for c in CONFIGS], action="append", help="only these configurations"
    )
    parser.add_argument("--hold", type=uuid.UUID, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--presence", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.hold is not None:
        asyncio.run(_hold(args.hold, args.presence))
        return ""
    kills = args.kills or (5 if args.quick else 20)
    rng = random.Random(20261124)
    rows = []
    loads = []
    with embedded_stack() as stack:
        for config in CONFIGS:
            if args.config and config.name not in args.config:
                continue
            times, load = _run_config(stack, config, kills, rng)
            if load is not None:
                loads.append(load)
            target = f"≤ {P99_TARGET_S[config.name]:g} s" if config.name in P99_TARGET_S else "-"
            rows.append(
                [
                    config.name,
                    "presence lock + stale heartbeat" if config.presence else "stale heartbeat",
                    config.heartbeat_s,
                    config.stale_s,
                    config.interval_s,
                    len(times),
                    f"{percentile(times, 50):.2f}",
                    f"{percentile(times, 99):.2f}",
                    f"{max(times):.2f}",
                    target,
                ]
            )
    out = table(
        [
            "config",
            "rescue path",
            "heartbeat s",
            "stale s",
            "interval s",
            "kills",
            "p50 s",
            "p99 s",
            "max s",
            "p99 target",
        ],
        rows,
    )
    for load in loads:
        out += "\n\nPresence check cost (instant):\n\n" + _load_table(load)
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"## Rescue (kill -9 of a lease holder → document requeued; load average {load_avg})\n\n" + out + "\n")
    return out


if __name__ == "__main__":
    main()
