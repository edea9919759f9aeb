"""The embedded local stack in a data dir: PostgreSQL, nanio, and the kbingest services.

``kbingest up`` supervises all of them (``services.cli.supervisor``): a process that dies is started
again with backoff, the embedded Postgres and nanio included.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.lifetime import die_with_parent
from devstack.postgres import EmbeddedPostgres
from devstack.s3 import EmbeddedS3
from services.cli.supervisor import Exit, Unit
from shared.internal_auth import data_dir_secret
from shared.local_postgres import LOCAL_DIRNAME
from shared.settings import LOCAL_PG_PORT, LOCAL_S3_PORT, SUBSCRIBER_GROUP_SEPARATOR, Settings
from shared.supervision import STATUS_FILE_ENV, STATUS_FILENAME

READY_TIMEOUT_S = 120.0
# Each processor holds its own extraction server and embedding model (~1.5 GB): more is a typo.
MAX_LOCAL_PROCESSORS = 16
DOCTOR_TIMEOUT_S = 120.0
STOP_GRACE_S = 40.0
# `pg_ctl status` is a process of its own: ask it less often than the services are polled.
POSTGRES_CHECK_S = 5.0

PROCESS_ENV = {
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
}


def bootstrap_key(data_dir: Path) -> tuple[str, bool]:
    """KBINGEST_API_KEY if set, else a key generated once and kept in the data dir."""
    if os.environ.get("KBINGEST_API_KEY"):
        return os.environ["KBINGEST_API_KEY"], False
    path = data_dir / "api_key"
    if path.exists():
        return path.read_text().strip(), False
    key = "kbi_" + secrets.token_urlsafe(32)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", command],
        env=env,
        stdout=sys.stdout.buffer,
        stderr=sys.stderr.buffer if sys.stderr else log,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    log.close()
    return proc


@dataclass
class Service:
    """A kbingest service process; ``start()`` runs it again with the same command and environment."""

    name: str
    port: int
    command: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    def start(self) -> None:
        self.proc = _spawn(self.command, self.env, self.log_path)

    def exited(self) -> Exit | None:
        code = self.proc.poll()
        return None if code is None else Exit(code)

    def pid(self) -> int | None:
        return self.proc.pid


@dataclass
class PostgresUnit:
    """The embedded Postgres as a supervised unit: a daemon, so "alive" is ``pg_ctl status``."""

    postgres: EmbeddedPostgres
    name: str = "postgres"
    _checked_at: float = field(default_factory=time.monotonic)
    _running: bool = True

    def start(self) -> None:
        self.postgres.start()
        self._checked_at, self._running = time.monotonic(), True

    def exited(self) -> Exit | None:
        if time.monotonic() - self._checked_at >= POSTGRES_CHECK_S:
            self._checked_at, self._running = time.monotonic(), self.postgres.running()
        return None if self._running else Exit()

    def pid(self) -> int | None:
        try:
            first = (self.postgres.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None


@dataclass
class S3Unit:
    s3: EmbeddedS3
    name: str = "s3"

    def start(self) -> None:
        self.s3.start()

    def exited(self) -> Exit | None:
        code = self.s3.returncode()
        return None if code is None else Exit(code)

    def pid(self) -> int | None:
        return self.s3.pid


@dataclass(frozen=True)
class Planned:
    """A service ``up`` starts: its display name, the ``kbingest`` command, its port, extra environment."""

    name: str
    command: str
    port: int
    env: dict[str, str] = field(default_factory=dict)


def routes_to_processors(settings: Settings, ports: Sequence[int]) -> dict[str, list[str]]:
    """The default routes with the local processor replaced by one any-of group of the processors on ``ports``."""
    one = settings.processor_url()
    group = SUBSCRIBER_GROUP_SEPARATOR.join(f"http://127.0.0.1:{port}/v1/events" for port in ports)
    return {
        event_type: [group if sub == one else sub for sub in subs]
        for event_type, subs in settings.effective_routes().items()
    }


def plan_services(settings: Settings, processors: int = 1) -> list[Planned]:
    """API, relay, ``processors`` processors, reconciler: the extra processors on free ports.

    Processors pull work and a work event is only a wake-up, so unless RELAY_ROUTES is set the relay
    routes it to one any-of group of all of them: one live member is woken, the others poll; a dead
    one is skipped instead of holding deliveries until they are dead-lettered.
    """
    ports = [settings.processor_port, *(free_port() for _ in range(processors - 1))]
    workers = [
        Planned(
            "processor" if i == 0 else f"processor-{i + 1}", "processor", port, {"KBINGEST_PROCESSOR_PORT": str(port)}
        )
        for i, port in enumerate(ports)
    ]
    shared_env: dict[str, str] = {}
    if processors > 1 and not settings.relay_routes:
        shared_env["KBINGEST_RELAY_ROUTES"] = json.dumps(routes_to_processors(settings, ports))
    planned = [
        Planned("api", "api", settings.api_port),
        Planned("relay", "relay", settings.relay_port),
        *workers,
        Planned("reconciler", "reconciler", settings.reconciler_port),
    ]
    return [Planned(p.name, p.command, p.port, {**shared_env, **p.env}) for p in planned]


@dataclass
class LocalStack:
    """Starts everything ``make run`` needs; ``stop()`` undoes it in reverse order."""

    data_dir: Path
    pg_port: int = LOCAL_PG_PORT
    s3_port: int = LOCAL_S3_PORT
    services: list[Service] = field(default_factory=list)

    @property
    def status_path(self) -> Path:
        return self.data_dir / STATUS_FILENAME

    def units(self) -> list[Unit]:
        """Everything ``up`` supervises, dependencies first."""
        return [PostgresUnit(self.postgres), S3Unit(self.s3), *self.services]

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(data_dir=self.data_dir)
        self.postgres = EmbeddedPostgres(self.data_dir / LOCAL_DIRNAME, self.pg_port, max_connections=100)
        self.s3 = EmbeddedS3(
            self.data_dir / "objects",
            self.s3_port,
            self.settings.s3_access_key,
            self.settings.s3_secret_key.get_secret_value(),
            log_path=self.data_dir / "s3.log",
        )

    def env(self, api_key: str) -> dict[str, str]:
        return {
            **os.environ,
            **PROCESS_ENV,
            "KBINGEST_DATA_DIR": str(self.data_dir),
            "KBINGEST_DATABASE_URL": self.postgres.dsn,
            "KBINGEST_S3_ENDPOINT": self.s3.endpoint,
            "KBINGEST_API_KEY": api_key,
            # Generated once per data dir, like the API key, unless the environment sets one.
            "KBINGEST_INTERNAL_SECRET": os.environ.get("KBINGEST_INTERNAL_SECRET") or data_dir_secret(self.data_dir),
            STATUS_FILE_ENV: str(self.status_path),
        }

    def start_dependencies(self) -> None:
        self.postgres.start()
        self.s3.start()

    def migrate(self, env: dict[str, str]) -> None:
        subprocess.run([sys.executable, "-m", "services.cli.main", "migrate"], env=env, check=True)

    def start_service(self, name: str, port: int, env: dict[str, str], command: str | None = None) -> None:
        command, log_path = command or name, self.data_dir / f"{name}.log"
        self.services.append(Service(name, port, command, env, log_path, _spawn(command, env, log_path)))

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> list[str]:
        """Wait until every service answers /readyz 200; returns the ones that did not."""
        deadline = time.monotonic() + timeout_s
        pending = {s.name: s for s in self.services}
        with httpx.Client(timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                for name, svc in list(pending.items()):
                    if svc.proc.poll() is not None:
                        return [f"{name} exited with {svc.proc.returncode}"]
                    try:
                        if client.get(f"http://127.0.0.1:{svc.port}/readyz").status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                time.sleep(0.3)
        return sorted(pending)

    def doctor(self, env: dict[str, str]) -> int:
        """Run ``kbingest doctor`` against the running stack and print its lines; never stops the stack."""
        try:
            result = subprocess.run(
                [sys.executable, "-m", "services.cli.main", "doctor"],
                env={**env, "NO_COLOR": "1"},
                capture_output=True,
                text=True,
                timeout=DOCTOR_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"  doctor    did not finish within {DOCTOR_TIMEOUT_S:g}s")
            return 1
        for line in result.stdout.splitlines():
            print(f"  doctor    {line}")
        if result.returncode != 0:
            print("  doctor    found problems (FAIL lines above); the stack keeps running; re-check: kbingest doctor")
        return result.returncode

    def stop(self) -> None:
        for svc in reversed(self.services):
            if svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for svc in reversed(self.services):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                svc.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(timeout=5)
        self.services.clear()
        self.s3.stop()
        self.postgres.stop()
