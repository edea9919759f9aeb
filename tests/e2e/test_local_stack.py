"""`make run` / `kbingest up` as a user runs it: start, upload, stop, restart, data kept."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import httpx
import pytest

from shared.local_postgres import database_url, read_password
from tests.support import servers
from tests.support.up_process import start_up, up_env, wait_gone

pytestmark = pytest.mark.e2e


def test_up_upload_stop_restart_keeps_data() -> None:
    data_dir = servers.scratch_dir("kbi-up-") / "data"
    env = up_env()

    up = start_up(data_dir, env)
    try:
        key = up.api_key
        assert key in up.text() and up.base_url in up.text()
        headers = {"Authorization": f"Bearer {key}"}
        kb = httpx.post(f"{up.base_url}/v1/knowledge-bases", json={"name": "e2e"}, headers=headers).json()["id"]
        created = httpx.post(
            f"{up.base_url}/v1/knowledge-bases/{kb}/documents",
            headers=headers,
            files={"file": ("hello.md", b"# Hello\n\nkbingest keeps this.", "text/markdown")},
        )
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
        assert asyncio.run(_database_answers(up.pg_dsn)), "the stack's own URL must connect"
        anonymous = database_url(up.pg_port, password=None, driver="postgresql")
        assert not asyncio.run(_database_answers(anonymous)), "the embedded Postgres must not trust local users"
        password = read_password(data_dir / "postgres")
        assert password and "password in" in up.text() and password not in up.text()
    finally:
        code = up.stop()
    assert code == 0, up.log_tail()
    assert "stopped" in up.text()
    assert not servers.EmbeddedPostgres(data_dir / "postgres", 1).running()

    up = start_up(data_dir, env)
    try:
        assert "(generated" not in up.text()
        got = httpx.get(f"{up.base_url}/v1/documents/{doc_id}", headers=headers)
        assert got.status_code == 200 and got.json()["filename"] == "hello.md"
        content = httpx.get(f"{up.base_url}/v1/documents/{doc_id}/content", headers=headers)
        assert content.content == b"# Hello\n\nkbingest keeps this."
    finally:
        assert up.stop() == 0, up.log_tail()


def test_services_do_not_outlive_a_killed_up() -> None:
    """kill -9 of `kbingest up` (or the OOM killer): its services stop too instead of running unsupervised."""
    up = start_up(servers.scratch_dir("kbi-up-") / "data", up_env())
    try:
        children = up.children()
        assert len(children) >= 5, f"expected nanio + 4 services, found {children}"
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait(timeout=10)
        wait_gone(children, what="`up`'s services to stop after it died")
    finally:
        up.stop()


async def _database_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidPasswordError:
        return False
    await conn.close()
    return True
