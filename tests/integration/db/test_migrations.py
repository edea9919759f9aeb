"""Migrations: upgrade head, models match (alembic check), downgrade and upgrade again."""

from __future__ import annotations

import subprocess
import sys

from devstack.postgres import EmbeddedPostgres
from tests.support import servers


def _alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(servers.ROOT / "alembic.ini"), "-x", f"url={url}", *args],
        cwd=servers.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_upgrade_check_downgrade_upgrade(pg_server: EmbeddedPostgres) -> None:
    name = "mig_" + servers.free_port().__str__()
    pg_server.psql(f"CREATE DATABASE {name}")
    url = pg_server.dsn_for(name)
    for args in (("upgrade", "head"), ("check",), ("downgrade", "base"), ("upgrade", "head"), ("check",)):
        result = _alembic(url, *args)
        assert result.returncode == 0, f"alembic {' '.join(args)}: {result.stderr}"
    tables = set(pg_server.psql("SELECT tablename FROM pg_tables WHERE schemaname='public'", name).split())
    assert {
        "knowledge_bases",
        "documents",
        "outbox",
        "processor_inbox",
        "document_attempts",
        "batches",
        "api_keys",
        "processors",
        "idempotency_keys",
    } <= tables


def test_partial_unique_indexes_exist(pg_server: EmbeddedPostgres) -> None:
    sql = "SELECT indexdef FROM pg_indexes WHERE tablename = 'documents' AND indexdef LIKE '%UNIQUE%WHERE%'"
    defs = pg_server.psql(sql, servers.TEMPLATE_DB)
    assert "(knowledge_base_id, filename) WHERE ((deleted_at IS NULL) AND (parent_id IS NULL))" in defs
    assert "(knowledge_base_id, sha256) WHERE ((deleted_at IS NULL) AND (parent_id IS NULL))" in defs


def test_stale_scan_uses_its_index(pg_server: EmbeddedPostgres) -> None:
    plan = pg_server.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT id FROM documents WHERE status = 'processing' "
        "AND heartbeat_at < now() - interval '30 seconds'",
        servers.TEMPLATE_DB,
    )
    assert "ix_documents_processing_heartbeat" in plan
