"""One real ``kbingest up`` for the user-facing e2e tests (UI and CLI), shared by every module that asks.

The stack runs as a process on free ports with its own data dir, exactly as a user starts it. Modules
that need it call ``acquire()`` from a session fixture and ``release()`` in its teardown; the last
release stops it. Tests using it carry ``xdist_group(GROUP)`` so one worker owns one stack.

While developing, ``KBINGEST_E2E_URL`` and ``KBINGEST_E2E_API_KEY`` point the tests at a stack that is
already running (nothing is started or stopped; names get a suffix so reruns don't collide).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import servers

GROUP = "kbingest-up"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 90.0
SERVICES = ("API", "RELAY", "PROCESSOR", "RECONCILER")


@dataclass
class UserStack:
    base_url: str
    api_key: str
    data_dir: Path
    proc: subprocess.Popen[str] | None
    output: list[str] = field(default_factory=list)
    users: int = 0

    def name(self, base: str) -> str:
        """A knowledge base name: as given on a fresh stack, made unique on a reused one."""
        return base if self.proc is not None else f"{base}-{uuid.uuid4().hex[:6]}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30)

    def log_tail(self, lines: int = 80) -> str:
        return "".join(self.output[-lines:])


_lock = threading.Lock()
_stack: UserStack | None = None


def _pump(proc: subprocess.Popen[str], sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)


def _start() -> UserStack:
    scratch = servers.scratch_dir("kbi-user-")
    ports = {name: servers.free_port() for name in SERVICES}
    api_key = "kbi_e2e_" + uuid.uuid4().hex
    env = {
        **os.environ,
        "KBINGEST_API_KEY": api_key,
        "KBINGEST_LOCAL_PG_PORT": str(servers.free_port()),
        "KBINGEST_LOCAL_S3_PORT": str(servers.free_port()),
        **{f"KBINGEST_{name}_PORT": str(port) for name, port in ports.items()},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(scratch / "data")],
        cwd=servers.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack = UserStack(f"http://127.0.0.1:{ports['API']}", api_key, scratch / "data", proc)
    threading.Thread(target=_pump, args=(proc, stack.output), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any("kbingest ready:" in line for line in stack.output):
            return stack
        if proc.poll() is not None:
            raise AssertionError("kbingest up exited:\n" + stack.log_tail())
        time.sleep(0.2)
    _stop(stack)
    raise AssertionError(f"kbingest up was not ready within {READY_TIMEOUT_S:.0f} s:\n" + stack.log_tail())


def _stop(stack: UserStack) -> None:
    if stack.proc is None:
        return
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)  # handled like Ctrl-C; SIGINT may be ignored in background jobs
        try:
            stack.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait(timeout=10)
    shutil.rmtree(stack.data_dir.parent, ignore_errors=True)


def acquire() -> UserStack:
    global _stack
    with _lock:
        if os.environ.get("KBINGEST_E2E_URL"):
            _stack = _stack or UserStack(
                os.environ["KBINGEST_E2E_URL"].rstrip("/"), os.environ["KBINGEST_E2E_API_KEY"], Path("."), None
            )
        elif _stack is None or (_stack.proc is not None and _stack.proc.poll() is not None):
            _stack = _start()
        _stack.users += 1
        return _stack


def release(stack: UserStack) -> None:
    global _stack
    with _lock:
        stack.users -= 1
        if stack.users <= 0:
            _stop(stack)
            if _stack is stack:
                _stack = None
