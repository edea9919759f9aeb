"""Rescue latency: kill -9 a processor holding a lease → the reconciler requeues the document.

Each holder is a real process that claims one document through ``lifecycle.claim`` and heartbeats it;
it is SIGKILLed at a random moment and the time until the document is back in ``queued`` is measured.
Two configurations: the defaults (heartbeat 5 s, stale 30 s, interval 10 s) and tuned (2 s, 10 s, 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import text

from benchmarks.support import ROOT, Stack, embedded_stack, free_port, percentile, table
from shared import lifecycle
from shared.db import Database, worker_database
from shared.storage import ObjectStore, object_key

TUNED_P99_TARGET_S = 15.0


@dataclass(frozen=True)
class Config:
    name: str
    heartbeat_s: float
    stale_s: float
    interval_s: float

    def env(self) -> dict[str, str]:
        return {
            "KBINGEST_HEARTBEAT_INTERVAL_S": str(self.heartbeat_s),
            "KBINGEST_STALE_AFTER_S": str(self.stale_s),
            "KBINGEST_RECONCILE_INTERVAL_S": str(self.interval_s),
        }


CONFIGS = (Config("default", 5.0, 30.0, 10.0), Config("tuned", 2.0, 10.0, 2.0))


async def _hold(document_id: uuid.UUID) -> None:
    """The simulated processor: claim, then heartbeat until killed (what services/processor does)."""
    heartbeat_s = float(os.environ["KBINGEST_HEARTBEAT_INTERVAL_S"])
    db = worker_database(os.environ["KBINGEST_DATABASE_URL"], service="bench.holder", max_connections=1)
    async with db.transaction() as conn:
        lease = await lifecycle.claim(conn, document_id, owner=f"bench-holder:{os.getpid()}")
    if lease is None:
        raise SystemExit(f"could not claim {document_id}")
    print("claimed", flush=True)
    while True:
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


async def _measure(stack: Stack, config: Config, kills: int, rng: random.Random) -> list[float]:
    env = {**stack.env, **config.env()}
    db = worker_database(env["KBINGEST_DATABASE_URL"], service="bench", max_connections=2)
    store = ObjectStore(
        endpoint=stack.s3.endpoint, access_key="bench", secret_key="bench-secret-key", bucket="kbingest", secure=False
    )
    await store.ensure_bucket()
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
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            holders.append(proc)
        for proc in holders:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"claimed":
                raise RuntimeError(f"holder did not claim: {line!r}")
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
        return [rescued[d] - killed[d] for d in docs]
    finally:
        await db.dispose()


def _run_config(stack: Stack, config: Config, kills: int, rng: random.Random) -> list[float]:
    port = free_port()
    env = {**stack.env, **config.env(), "KBINGEST_RECONCILER_PORT": str(port)}
    reconciler = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "reconciler"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return asyncio.run(_measure(stack, config, kills, rng))
    finally:
        reconciler.terminate()
        reconciler.wait(timeout=60)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 kills per configuration instead of 20")
    parser.add_argument("--kills", type=int, default=None, help="kills per configuration")
    parser.add_argument("--hold", type=uuid.UUID, default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.hold is not None:
        asyncio.run(_hold(args.hold))
        return ""
    kills = args.kills or (5 if args.quick else 20)
    rng = random.Random(20261124)
    rows = []
    with embedded_stack() as stack:
        for config in CONFIGS:
            times = _run_config(stack, config, kills, rng)
            target = f"≤ {TUNED_P99_TARGET_S:g} s" if config.name == "tuned" else "-"
            rows.append(
                [
                    config.name,
                    config.heartbeat_s,
                    config.stale_s,
                    config.interval_s,
                    len(times),
                    percentile(times, 50),
                    percentile(times, 99),
                    max(times),
                    target,
                ]
            )
    out = table(
        ["config", "heartbeat s", "stale s", "interval s", "kills", "p50 s", "p99 s", "max s", "p99 target"], rows
    )
    print("## Rescue (kill -9 of a lease holder → document requeued)\n\n" + out + "\n")
    return out


if __name__ == "__main__":
    main()
