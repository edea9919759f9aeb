"""Benchmark plumbing: embedded servers, a real API process, percentiles, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.postgres import EmbeddedPostgres
from devstack.s3 import EmbeddedS3
from tests.support.pipeline_helpers import wait_http_ok

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50) * 1000,
        "p95": percentile(values, 95) * 1000,
        "p99": percentile(values, 99) * 1000,
        "mean": statistics.fmean(values) * 1000 if values else float("nan"),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    s3: EmbeddedS3
    env: dict[str, str]


@contextmanager
def embedded_stack(max_connections: int = 100) -> Iterator[Stack]:
    """A durable-off Postgres and a nanio server in a temp dir, migrated."""
    base = Path(tempfile.mkdtemp(prefix="kbi-bench-", dir="/tmp"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base / "pg", free_port(), max_connections=max_connections, durable=False)
    s3 = EmbeddedS3(base / "s3", free_port(), "bench", "bench-secret-key", log_path=base / "s3.log")
    pg.start()
    s3.start()
    env = {
        **os.environ,
        "KBINGEST_DATABASE_URL": pg.dsn,
        "KBINGEST_S3_ENDPOINT": s3.endpoint,
        "KBINGEST_S3_ACCESS_KEY": "bench",
        "KBINGEST_S3_SECRET_KEY": "bench-secret-key",
        "KBINGEST_DATA_DIR": str(base / "data"),
        "KBINGEST_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [sys.executable, "-m", "services.cli.main", "migrate"], env=env, check=True, cwd=ROOT, capture_output=True
    )
    try:
        yield Stack(pg, s3, env)
    finally:
        s3.stop()
        pg.destroy()


def kbingest_process(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``kbingest COMMAND`` as a quiet child process (its output would mix into the benchmark's report)."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def serving(command: str, env: dict[str, str], port: int) -> Iterator[str]:
    """``kbingest COMMAND`` serving on ``port``; yields its base URL once /readyz is 200, stopped on exit."""
    proc = kbingest_process(command, env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/readyz", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def api_process(stack: Stack, api_key: str, **extra_env: str) -> Iterator[str]:
    """``kbingest api`` as a real process; yields its base URL once /readyz is 200."""
    port = free_port()
    env = {**stack.env, "KBINGEST_API_PORT": str(port), "KBINGEST_API_KEY": api_key, **extra_env}
    with serving("api", env, port) as base:
        yield base
