"""`make run` / `kbingest up` as a user runs it: start, upload, stop, restart, data kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import servers

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 180.0


def _start(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
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
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError("kbingest up exited:\n" + "".join(lines))
            continue
        lines.append(line)
        if "kbingest ready:" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("kbingest up never printed 'ready':\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    return out


def test_up_upload_stop_restart_keeps_data() -> None:
    data_dir = servers.scratch_dir("kbi-up-") / "data"
    ports = {name: servers.free_port() for name in ("API", "RELAY", "PROCESSOR", "RECONCILER")}
    env = {
        **os.environ,
        "KBINGEST_LOCAL_PG_PORT": str(servers.free_port()),
        "KBINGEST_LOCAL_S3_PORT": str(servers.free_port()),
        **{f"KBINGEST_{name}_PORT": str(port) for name, port in ports.items()},
    }
    env.pop("KBINGEST_API_KEY", None)
    base = f"http://127.0.0.1:{ports['API']}"

    proc, lines = _start(data_dir, env)
    try:
        output = "".join(lines)
        key = (data_dir / "api_key").read_text().strip()
        assert key in output and base in output
        headers = {"Authorization": f"Bearer {key}"}
        kb = httpx.post(f"{base}/v1/knowledge-bases", json={"name": "e2e"}, headers=headers).json()["id"]
        created = httpx.post(
            f"{base}/v1/knowledge-bases/{kb}/documents",
            headers=headers,
            files={"file": ("hello.md", b"# Hello\n\nkbingest keeps this.", "text/markdown")},
        )
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
    finally:
        out = _stop(proc)
    assert "stopped" in out
    assert not servers.EmbeddedPostgres(data_dir / "postgres", 1).running()

    proc, lines = _start(data_dir, env)
    try:
        assert "(generated" not in "".join(lines)
        got = httpx.get(f"{base}/v1/documents/{doc_id}", headers=headers)
        assert got.status_code == 200 and got.json()["filename"] == "hello.md"
        content = httpx.get(f"{base}/v1/documents/{doc_id}/content", headers=headers)
        assert content.content == b"# Hello\n\nkbingest keeps this."
    finally:
        _stop(proc)
