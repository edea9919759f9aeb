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
import threading
import uuid
from dataclasses import dataclass

import httpx

from tests.support import servers
from tests.support.up_process import UpProcess, start_up, up_env

GROUP = "kbingest-up"


@dataclass
class UserStack:
    base_url: str
    api_key: str
    up: UpProcess | None
    users: int = 0

    def name(self, base: str) -> str:
        """A knowledge base name: as given on a fresh stack, made unique on a reused one."""
        return base if self.up is not None else f"{base}-{uuid.uuid4().hex[:6]}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30)

    def log_tail(self, lines: int = 80) -> str:
        return self.up.log_tail(lines) if self.up is not None else "(a stack started elsewhere: see its own logs)"


_lock = threading.Lock()
_stack: UserStack | None = None


def _start() -> UserStack:
    up = start_up(servers.scratch_dir("kbi-user-") / "data", up_env(KBINGEST_API_KEY="kbi_e2e_" + uuid.uuid4().hex))
    return UserStack(up.base_url, up.api_key, up)


def _stop(stack: UserStack) -> None:
    if stack.up is None:
        return
    stack.up.stop()
    shutil.rmtree(stack.up.data_dir.parent, ignore_errors=True)


def acquire() -> UserStack:
    global _stack
    with _lock:
        if os.environ.get("KBINGEST_E2E_URL"):
            _stack = _stack or UserStack(
                os.environ["KBINGEST_E2E_URL"].rstrip("/"), os.environ["KBINGEST_E2E_API_KEY"], None
            )
        elif _stack is None or (_stack.up is not None and _stack.up.proc.poll() is not None):
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
