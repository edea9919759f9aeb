"""The embedded Postgres needs its generated password; clusters from before passwords are migrated."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import asyncpg
import pytest

from devstack.postgres import HBA_CONF, EmbeddedPostgres
from shared.local_postgres import database_url, password_path, read_password
from tests.support import servers

TRUST_HBA = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"


@pytest.fixture
def cluster() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(servers.scratch_dir("kbi-pgauth-") / "data", servers.free_port(), durable=False)
    yield pg
    pg.destroy()
    shutil.rmtree(pg.data_dir.parent, ignore_errors=True)


async def _connects(pg: EmbeddedPostgres, password: str | None) -> bool:
    try:
        conn = await asyncpg.connect(database_url(pg.port, password=password, driver="postgresql"), timeout=10)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    await conn.close()
    return True


async def test_connecting_needs_the_generated_password(cluster: EmbeddedPostgres) -> None:
    cluster.start()
    password = read_password(cluster.data_dir)
    assert password and password_path(cluster.data_dir).stat().st_mode & 0o777 == 0o600
    assert not await _connects(cluster, None)
    assert not await _connects(cluster, "postgres")
    assert await _connects(cluster, password)
    assert cluster.psql("SELECT 1").strip() == "1"
    assert (cluster.data_dir / "pg_hba.conf").read_text() == HBA_CONF

    cluster.stop()
    cluster.start()
    assert read_password(cluster.data_dir) == password, "the password is generated once per data dir"
    assert await _connects(cluster, password)


def _make_legacy(pg: EmbeddedPostgres) -> None:
    """Turn the cluster into one from before passwords: trust for everyone, no password file."""
    (pg.data_dir / "pg_hba.conf").write_text(TRUST_HBA)
    pg.psql("ALTER ROLE postgres PASSWORD NULL")
    password_path(pg.data_dir).unlink()


async def test_a_stopped_legacy_cluster_is_secured_on_its_next_start(cluster: EmbeddedPostgres) -> None:
    cluster.start()
    _make_legacy(cluster)
    cluster.stop()
    cluster.start()
    password = read_password(cluster.data_dir)
    assert password
    assert not await _connects(cluster, None)
    assert await _connects(cluster, password)


async def test_a_running_legacy_cluster_is_restarted_secured(cluster: EmbeddedPostgres) -> None:
    cluster.start()
    _make_legacy(cluster)
    cluster.stop()
    # Started the way the old code did: trust on 127.0.0.1.
    cluster._run(
        "pg_ctl",
        "-D",
        str(cluster.data_dir),
        "-l",
        str(cluster.data_dir / "server.log"),
        "-w",
        "-o",
        f"-h 127.0.0.1 -p {cluster.port} -k {cluster.data_dir}",
        "start",
    )
    assert await _connects(cluster, None), "precondition: the legacy cluster trusts everyone"
    cluster.start()
    assert not await _connects(cluster, None)
    assert await _connects(cluster, read_password(cluster.data_dir))
