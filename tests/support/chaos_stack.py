"""The campaign's stack: embedded Postgres and nanio, and every kbingest service as its own process.

``kbingest up`` does not restart a dead service (yet), so the campaign starts ``kbingest api``,
``relay``, two ``processor``s and ``reconciler`` itself, each on a fixed port with its own log, and
restarts what it killed. A service that exits without having been signalled is an unexpected exit:
recorded (a finding) and restarted, so one crash does not end the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.settings import INFORMATIONAL_EVENT_TYPES, PROCESSOR_EVENT_TYPES, SUBSCRIBER_GROUP_SEPARATOR
from tests.support import servers
from tests.support.chaos_proxy import CuttableProxy
from tests.support.fake_embedder import FakeEmbedder, fake_embedder
from tests.support.pipeline_helpers import start_cli, stop_process, wait_http_ok
from tests.support.relay_helpers import SECRET

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
PROCESSORS = 2
PG_MAX_CONNECTIONS = 100
EXTRACTION_SERVER = "services.processor.extraction.worker"

# Shortened clocks so a few minutes see many rescues, retries and sweeps (defaults in docs/configuration.md).
TUNING = {
    # Stale after 10 s, not 5: on 2 cores shared with other suites a live heartbeat can lag 5 s.
    "KBINGEST_HEARTBEAT_INTERVAL_S": "2",
    "KBINGEST_STALE_AFTER_S": "10",
    "KBINGEST_RECONCILE_INTERVAL_S": "1",
    "KBINGEST_ORPHAN_GRACE_S": "10",
    "KBINGEST_RETRY_BASE_S": "2",
    "KBINGEST_MAX_ATTEMPTS": "5",
    # Faster retries than the defaults (1 s to 300 s) so an event held by a garbage spell, and every
    # later event of its document, moves again within seconds of the spell; still ~2 min of failing
    # before the 10th attempt, so restarting processors (one group: only both down is an attempt)
    # never make a dead letter.
    "KBINGEST_RELAY_BACKOFF_BASE_S": "0.5",
    "KBINGEST_RELAY_BACKOFF_MAX_S": "30",
    # 2 + 5 s per request, below the garbage subscriber's 10 s stall, so a stall is a timeout.
    "KBINGEST_RELAY_CONNECT_TIMEOUT_S": "2",
    "KBINGEST_RELAY_TIMEOUT_S": "5",
    "KBINGEST_LOG_LEVEL": "INFO",
    "KBINGEST_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
}
PORT_VARS = {
    "api": "KBINGEST_API_PORT",
    "relay": "KBINGEST_RELAY_PORT",
    "processor": "KBINGEST_PROCESSOR_PORT",
    "reconciler": "KBINGEST_RECONCILER_PORT",
}


@dataclass
class Service:
    """One ``kbingest <command>`` process, restartable on the same port."""

    name: str
    command: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Set while the campaign itself holds it down or signalled it: its exit is expected.
    held: bool = False

    def start(self) -> None:
        self.proc = start_cli([self.command], {**self.env, PORT_VARS[self.command]: str(self.port)}, self.log)
        self.starts += 1
        self.held = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Wait for the process to end; kill it when it does not within ``timeout_s``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def ready(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tree(self) -> list[psutil.Process]:
        """The process and its children (a processor's extraction server)."""
        if self.pid is None:
            return []
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def extraction_server(self) -> psutil.Process | None:
        for child in self.tree()[1:]:
            with suppress(psutil.Error):
                if any(EXTRACTION_SERVER in part for part in child.cmdline()):
                    return child
        return None

    def log_tail(self, chars: int = 3000) -> str:
        with suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


@dataclass
class ChaosStack:
    root: Path
    postgres: servers.EmbeddedPostgres
    s3: servers.EmbeddedS3
    embedder: FakeEmbedder
    vector_proxy: CuttableProxy
    subscriber: subprocess.Popen[bytes]
    subscriber_port: int
    api_key: str
    env: dict[str, str]
    s3_keeper: ThreadPoolExecutor
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.services['api'].port}"

    @property
    def subscriber_url(self) -> str:
        return f"http://127.0.0.1:{self.subscriber_port}"

    @property
    def pg_dsn(self) -> str:
        return self.postgres.dsn_for("postgres", driver="postgresql")

    @property
    def bucket(self) -> str:
        return self.env["KBINGEST_S3_BUCKET"]

    @property
    def qdrant_path(self) -> Path:
        return Path(self.env["KBINGEST_DATA_DIR"]) / "qdrant"

    def restart_s3(self) -> None:
        """(Re)start nanio from the keeper thread: nanio dies with the thread that started it
        (PR_SET_PDEATHSIG is per thread), and the fault injector's thread ends before the checks."""
        self.s3_keeper.submit(self._start_s3_if_down).result(timeout=60)

    def _start_s3_if_down(self) -> None:
        process = self.s3._proc
        if process is None or process.poll() is not None:
            self.s3.start()

    def stop_s3(self) -> None:
        self.s3_keeper.submit(self.s3.kill).result(timeout=60)

    def processors(self) -> list[Service]:
        return [s for name, s in self.services.items() if name.startswith("processor")]

    def wait_ready(self, names: list[str] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(names or self.services)
        with httpx.Client() as client:
            while pending:
                pending = [n for n in pending if not self.services[n].ready(client)]
                for name in pending:
                    svc = self.services[name]
                    if svc.proc is not None and svc.proc.poll() is not None:
                        raise AssertionError(f"{name} exited {svc.proc.returncode}:\n{svc.log_tail()}")
                if pending and time.monotonic() > deadline:
                    tails = "\n".join(f"--- {n}\n{self.services[n].log_tail()}" for n in pending)
                    raise AssertionError(f"not ready within {timeout_s:g}s: {pending}\n{tails}")
                time.sleep(0.3)

    def stop_all(self) -> None:
        for svc in self.services.values():
            svc.held = True
            svc.signal(signal.SIGCONT)
            svc.signal(signal.SIGTERM)
        for svc in self.services.values():
            svc.wait_exit()


def routes(processor_ports: list[int], subscriber_port: int) -> dict[str, list[str]]:
    """Work events to the processors as one any-of group; informational ones to the audit and garbage sides."""
    group = SUBSCRIBER_GROUP_SEPARATOR.join(f"http://127.0.0.1:{p}/v1/events" for p in processor_ports)
    informational = [f"http://127.0.0.1:{subscriber_port}/{side}/v1/events" for side in ("audit", "garbage")]
    table: dict[str, list[str]] = {event_type: [group] for event_type in PROCESSOR_EVENT_TYPES}
    table.update({event_type: list(informational) for event_type in INFORMATIONAL_EVENT_TYPES})
    return table


def _start_subscriber(port: int, seed: int, log: Path) -> subprocess.Popen[bytes]:
    args = ["-m", "tests.support.chaos_subscriber", "--port", str(port), "--secret", SECRET, "--seed", str(seed)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=servers.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, log, timeout_s=30)
    except AssertionError:
        stop_process(proc, timeout_s=10)
        raise
    return proc


@contextmanager
def chaos_stack(seed: int) -> Iterator[ChaosStack]:
    """Everything up and ready; on exit every process started here is stopped, whatever happened."""
    root = servers.scratch_dir("kbi-chaos-")
    started: list[Any] = []
    stack: ChaosStack | None = None
    try:
        # Durable, as the local stack runs it: with synchronous_commit=off (the test suites' setting) an
        # immediate restart loses commits already answered 201, which is the configuration's loss, not ours.
        postgres = servers.EmbeddedPostgres(
            root / "pg" / "data", servers.free_port(), max_connections=PG_MAX_CONNECTIONS
        )
        (root / "pg").mkdir(parents=True, exist_ok=True)
        (root / "pg").chmod(0o755)
        postgres.start()
        started.append(lambda: postgres.stop("immediate"))
        servers.migrate(postgres.dsn)
        keeper = ThreadPoolExecutor(1, thread_name_prefix="chaos-s3")
        started.append(lambda: keeper.shutdown(wait=True))
        s3 = keeper.submit(servers.start_s3).result(timeout=60)
        started.append(lambda: keeper.submit(s3.stop).result(timeout=60))
        with fake_embedder() as embedder:
            subscriber_port = servers.free_port()
            subscriber = _start_subscriber(subscriber_port, seed, root / "subscriber.log")
            started.append(lambda: stop_process(subscriber, timeout_s=10))
            ports = {name: servers.free_port() for name in ("api", "relay", "reconciler", "proxy")}
            processor_ports = [servers.free_port() for _ in range(PROCESSORS)]
            proxy = CuttableProxy(ports["proxy"], ports["api"])
            proxy.start()
            started.append(proxy.stop)
            api_key = "kbi_chaos_" + uuid.uuid4().hex
            env = {
                **os.environ,
                **TUNING,
                "KBINGEST_DATA_DIR": str(root / "data"),
                "KBINGEST_DATABASE_URL": postgres.dsn,
                "KBINGEST_S3_ENDPOINT": s3.endpoint,
                "KBINGEST_S3_ACCESS_KEY": s3.access_key,
                "KBINGEST_S3_SECRET_KEY": s3.secret_key,
                "KBINGEST_S3_BUCKET": f"chaos-{uuid.uuid4().hex[:12]}",
                "KBINGEST_API_KEY": api_key,
                "KBINGEST_INTERNAL_SECRET": "chaos-internal-" + uuid.uuid4().hex,
                "KBINGEST_RELAY_SECRET": SECRET,
                "KBINGEST_RELAY_ROUTES": json.dumps(routes(processor_ports, subscriber_port)),
                "KBINGEST_EMBEDDING_MODEL": "openai/text-embedding-3-small",
                "KBINGEST_EMBEDDING_API_BASE": embedder.base_url,
                "KBINGEST_API_PORT": str(ports["api"]),
                "KBINGEST_API_INTERNAL_URL": f"http://127.0.0.1:{ports['proxy']}",
            }
            (root / "data").mkdir()
            stack = ChaosStack(root, postgres, s3, embedder, proxy, subscriber, subscriber_port, api_key, env, keeper)
            plan = [("api", "api", ports["api"]), ("relay", "relay", ports["relay"])]
            plan += [(f"processor-{i + 1}", "processor", port) for i, port in enumerate(processor_ports)]
            plan.append(("reconciler", "reconciler", ports["reconciler"]))
            for name, command, port in plan:
                stack.services[name] = Service(name, command, port, env, root / f"{name}.log")
            for svc in stack.services.values():
                svc.start()
            stack.wait_ready()
            yield stack
    finally:
        if stack is not None:
            stack.stop_all()
        for stop in reversed(started):
            with suppress(Exception):
                stop()
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
