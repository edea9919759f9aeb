"""Seed 001: processing ran inside the API process and the UI took minutes to load.

Guard: the API never imports the processing stack and never claims work. Checked on the import graph
(import-linter), on a fresh interpreter's ``sys.modules``, and on a real ``kbingest api`` process's behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.support import servers
from tests.support.pipeline_helpers import fetch, open_db, service_env, start_cli, stop_process, wait_http_ok

FORBIDDEN = ("services.processor", "unstructured", "litellm", "qdrant_client", "services.relay", "services.reconciler")
PROBE = """
import sys
from services.api.app import create_app
import services.api.main
from shared.settings import Settings
create_app(Settings(_env_file=None))
print("\\n".join(sorted(m for m in sys.modules if m.startswith({forbidden!r}))))
"""


def test_seed_001_api_imports_no_processing_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(forbidden=FORBIDDEN)],
        cwd=servers.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the API process loaded: {result.stdout}"


def test_seed_001_import_contract_is_kept() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=servers.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "the API never runs processing in its own process (seed 001) KEPT" in result.stdout, result.stdout


async def test_seed_001_api_process_never_claims_work(settings: Settings, tmp_path: Path) -> None:
    port = servers.free_port()
    log = tmp_path / "api.log"
    proc = start_cli(["api"], service_env(settings, KBINGEST_API_PORT=str(port)), log)
    base = f"http://127.0.0.1:{port}"
    db = open_db(settings)
    try:
        wait_http_ok(f"{base}/readyz", proc, log)
        headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            kb = (await client.post("/v1/knowledge-bases", json={"name": "seed-001"})).json()["id"]
            for i in range(5):
                response = await client.post(
                    f"/v1/knowledge-bases/{kb}/documents",
                    files={"file": (f"f{i}.md", f"# {i}\n".encode(), "text/markdown")},
                )
                assert response.status_code == 201, response.text
            # Give an in-process worker every chance to show itself.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.25)
        docs = await fetch(db, "SELECT status, attempts, lease_owner FROM documents")
        assert len(docs) == 5
        api_id = f"{socket.gethostname()}:{proc.pid}:"
        assert not [d for d in docs if (d["lease_owner"] or "").startswith(api_id)]
        assert {(d["status"], d["attempts"], d["lease_owner"]) for d in docs} == {("queued", 0, None)}
        assert await fetch(db, "SELECT * FROM document_attempts") == []
        names = {
            r["application_name"]
            for r in await fetch(
                db,
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'kbingest.%' AND application_name <> 'kbingest.test'",
            )
        }
        assert names <= {"kbingest.api", "kbingest.api.listen"}, names
    finally:
        await db.dispose()
        # uvicorn re-raises SIGTERM once it has shut down cleanly.
        assert stop_process(proc) in (0, -15), log.read_text()[-3000:]
