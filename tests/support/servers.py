"""Embedded Postgres / S3 for tests: one server per xdist worker, one database per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from devstack.postgres import EmbeddedPostgres
from devstack.s3 import EmbeddedS3

__all__ = ["EmbeddedPostgres", "EmbeddedS3"]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
TEMPLATE_DB = "kbingest_template"
S3_ACCESS_KEY = "kbingest-test"
S3_SECRET_KEY = "kbingest-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scratch_dir(prefix: str) -> Path:
    """A temp dir the unprivileged Postgres user can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("KBINGEST_TEST_TMP", "/tmp")))
    path.chmod(0o755)
    return path


def start_postgres(max_connections: int = 200) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(scratch_dir("kbi-pg-") / "data", free_port(), max_connections=max_connections, durable=False)
    pg.start()
    return pg


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )


def prepare_template(pg: EmbeddedPostgres) -> None:
    pg.psql(f"CREATE DATABASE {TEMPLATE_DB}")
    migrate(pg.dsn_for(TEMPLATE_DB))


def clone_database(pg: EmbeddedPostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    return name


def start_s3() -> EmbeddedS3:
    base = scratch_dir("kbi-s3-")
    s3 = EmbeddedS3(base / "objects", free_port(), S3_ACCESS_KEY, S3_SECRET_KEY, log_path=base / "s3.log")
    s3.start()
    return s3
