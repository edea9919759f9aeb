"""`kbingest up` as a real process on free ports, exactly as a user starts it (for end-to-end tests).

One launcher for every e2e suite: the corpus run, the local-stack restart test and the shared
user stack (UI, CLI). The output is drained by a thread from the start: services log to the same
pipe, and a full pipe would block their event loops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.cli.localstack import LocalStack
from shared.local_postgres import LOCAL_DIRNAME, database_url, read_password
from tests.support import servers
from tests.support.poll import until

READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 120.0
SERVICES = ("API", "RELAY", "PROCESSOR", "RECONCILER")


@dataclass
class UpProcess:
    proc: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    output: list[str] = field(default_factory=list)
    _drain: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['KBINGEST_API_PORT']}"

    @property
    def api_key(self) -> str:
        return self.env.get("KBINGEST_API_KEY") or (self.data_dir / "api_key").read_text().strip()

    @property
    def pg_port(self) -> int:
        return int(self.env["KBINGEST_LOCAL_PG_PORT"])

    @property
    def pg_dsn(self) -> str:
        """The stack's Postgres for asyncpg (the services use the same database)."""
        password = read_password(self.data_dir / LOCAL_DIRNAME)
        return database_url(self.pg_port, password=password, driver="postgresql")

    def service_env(self, **extra: str) -> dict[str, str]:
        """What ``up`` gives its services (this stack's database, objects, data dir, key), plus ``extra``.

        For one more service next to the stack (``pipeline_helpers.start_cli``), which ``up`` does not
        supervise: killing it does not stop the stack.
        """
        local = LocalStack(self.data_dir, pg_port=self.pg_port, s3_port=int(self.env["KBINGEST_LOCAL_S3_PORT"]))
        return {**self.env, **local.env(self.api_key), **extra}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )

    def text(self) -> str:
        return "".join(self.output)

    def log_tail(self, lines: int = 80) -> str:
        return "".join(self.output[-lines:])

    def children(self) -> list[int]:
        """PIDs of the processes ``up`` started itself (services, nanio; Postgres is a daemon)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError):
                # "pid (comm) state ppid …": comm may hold spaces, so split after its closing paren.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
        return found

    def descendants(self, pid: int | None = None) -> list[int]:
        """PIDs of every process below ``pid`` (default: ``up``), children of children included."""
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError):
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [pid or self.proc.pid]
        while todo:
            below = parents.get(todo.pop(), [])
            found += below
            todo += below
        return found

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (what ``up`` handles like Ctrl-C; SIGINT is ignored in background jobs), then force."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                # The services die with `up` (PR_SET_PDEATHSIG); Postgres is stopped below.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self._drain is not None:
            self._drain.join(timeout=10)
        postgres = servers.EmbeddedPostgres(self.data_dir / "postgres", self.pg_port)
        if postgres.running():
            postgres.stop("immediate")
        return self.proc.returncode


def alive(pid: int) -> bool:
    """Running and not a zombie (dead, but listed until its parent, or init for an orphan, reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], *, timeout_s: float = 60.0, what: str = "the processes to end") -> None:
    """Wait until none of ``pids`` runs; fails naming those still alive."""
    until(lambda: not [pid for pid in pids if alive(pid)], timeout_s=timeout_s, what=what)


def up_env(**extra: str) -> dict[str, str]:
    """The environment of a stack on free ports (``extra`` wins); the API key is generated unless given."""
    env = {
        **os.environ,
        "KBINGEST_LOCAL_PG_PORT": str(servers.free_port()),
        "KBINGEST_LOCAL_S3_PORT": str(servers.free_port()),
        **{f"KBINGEST_{name}_PORT": str(servers.free_port()) for name in SERVICES},
    }
    env.pop("KBINGEST_API_KEY", None)
    return {**env, **extra}


def start_up(data_dir: Path, env: dict[str, str], timeout_s: float = READY_TIMEOUT_S) -> UpProcess:
    """Start ``kbingest up --data-dir`` and return once it printed ``kbingest ready:``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir)],
        cwd=servers.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    up = UpProcess(proc, data_dir, env)
    up._drain = threading.Thread(target=_drain, args=(proc, up.output), daemon=True)
    up._drain.start()

    def exited() -> str | None:
        return None if proc.poll() is None else f"it exited {proc.returncode}"

    try:
        until(
            lambda: any("kbingest ready:" in line for line in up.output),
            timeout_s=timeout_s,
            what="`kbingest up` to print 'kbingest ready:'",
            give_up=exited,
        )
    except AssertionError as exc:
        up.stop(timeout_s=30)
        raise AssertionError(f"{exc}:\n{up.log_tail()}") from exc
    return up


@contextmanager
def running_up(**extra_env: str) -> Iterator[UpProcess]:
    """A stack of its own in a scratch data dir, stopped on exit."""
    up = start_up(servers.scratch_dir("kbi-stack-") / "data", up_env(**extra_env))
    try:
        yield up
    finally:
        up.stop()


def _drain(proc: subprocess.Popen[str], sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)
        del sink[:-5000]
