"""`kbingest up` as a real process on free ports, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import servers

READY_TIMEOUT_S = 240.0


@dataclass
class RunningStack:
    base_url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[str]
    output: list[str]
    pg_port: int

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        del lines[:-2000]


@contextmanager
def running_stack(**extra_env: str) -> Iterator[RunningStack]:
    data_dir = servers.scratch_dir("kbi-stack-") / "data"
    ports = {name: servers.free_port() for name in ("API", "RELAY", "PROCESSOR", "RECONCILER")}
    pg_port = servers.free_port()
    env = {
        **os.environ,
        "KBINGEST_LOCAL_PG_PORT": str(pg_port),
        "KBINGEST_LOCAL_S3_PORT": str(servers.free_port()),
        **{f"KBINGEST_{name}_PORT": str(port) for name, port in ports.items()},
        **extra_env,
    }
    env.pop("KBINGEST_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir)],
        cwd=servers.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
            if "kbingest ready:" in line:
                break
        elif proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kbingest up did not get ready:\n" + "".join(lines[-80:]))
    # Keep draining: services log to this pipe, and a full pipe would block their event loops.
    threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
    stack = RunningStack(
        f"http://127.0.0.1:{ports['API']}", (data_dir / "api_key").read_text().strip(), data_dir, proc, lines, pg_port
    )
    try:
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
