"""Migrations: upgrade head, models match (alembic check), downgrade and upgrade again, each downgrade exact."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from alembic.command import check, downgrade, stamp, upgrade
from alembic.config import Config
from alembic.script import ScriptDirectory

from devstack.postgres import EmbeddedPostgres, bin_dir
from shared.local_postgres import database_url
from tests.support import servers


def _alembic(url: str, run: Callable[..., None], *args: str) -> None:
    """An alembic command in this process (a subprocess each costs a second of start-up); failures raise."""
    config = Config(servers.ROOT / "alembic.ini")
    config.set_main_option("sqlalchemy.url", url)
    run(config, *args)


def _empty_database(pg: EmbeddedPostgres) -> str:
    name = f"mig_{servers.free_port()}"
    pg.psql(f"CREATE DATABASE {name}")
    return name


def _schema(pg: EmbeddedPostgres, database: str) -> str:
    """pg_dump --schema-only: every table, column, default, constraint, index, sequence and storage parameter."""
    dsn = database_url(pg.port, database, password=None, driver="postgresql")
    result = subprocess.run(
        # A fixed \restrict key: pg_dump otherwise writes a random one into every dump.
        [str(bin_dir() / "pg_dump"), "--schema-only", "--restrict-key=kbingest", "-d", dsn],
        env={**os.environ, "PGPASSWORD": pg.password},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_upgrade_check_downgrade_upgrade(pg_server: EmbeddedPostgres) -> None:
    name = _empty_database(pg_server)
    url = pg_server.dsn_for(name)
    for run, *args in ((upgrade, "head"), (check,), (downgrade, "base"), (upgrade, "head"), (check,)):
        _alembic(url, run, *args)
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


def test_each_downgrade_restores_the_schema_its_upgrade_started_from(pg_server: EmbeddedPostgres) -> None:
    """Revision by revision: the dump after a downgrade equals, to the byte, the dump before its upgrade."""
    name = _empty_database(pg_server)
    url = pg_server.dsn_for(name)
    revisions = list(reversed(list(ScriptDirectory.from_config(Config(servers.ROOT / "alembic.ini")).walk_revisions())))
    assert len(revisions) >= 9
    _alembic(url, stamp, "base")  # the version table exists from here on, as it does after a downgrade to base
    before = {}
    for script in revisions:
        before[script.revision] = _schema(pg_server, name)
        _alembic(url, upgrade, script.revision)
    for script in reversed(revisions):
        _alembic(url, downgrade, script.down_revision or "base")
        assert _schema(pg_server, name) == before[script.revision], f"downgrade of {script.revision}"


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
