"""SIGTERM to a real `kbingest processor` mid-extraction hands the document back at once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.support import servers
from tests.support.api_helpers import fetch_all
from tests.support.pipeline_helpers import service_env, wait_http_ok
from tests.support.poll import until
from tests.support.processor_harness import signed_headers

pytestmark = pytest.mark.e2e


@pytest.fixture
def services(settings: Settings) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    api_port, processor_port = servers.free_port(), servers.free_port()
    env = service_env(settings, KBINGEST_API_PORT=str(api_port), KBINGEST_PROCESSOR_PORT=str(processor_port))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", name],
            env=env,
            cwd=servers.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("api", "processor")
    ]
    api, processor = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{processor_port}"
    try:
        wait_http_ok(f"{api}/readyz", procs[0], timeout_s=180)
        wait_http_ok(f"{processor}/readyz", procs[1], timeout_s=180)
        yield api, processor, procs[1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def test_sigterm_hands_back_the_document_immediately(
    settings: Settings, services: tuple[str, str, subprocess.Popen[bytes]], corpus: Path
) -> None:
    api, processor, proc = services
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        kb = client.post("/v1/knowledge-bases", json={"name": "sigterm"}).json()["id"]
        doc = client.post(
            f"/v1/knowledge-bases/{kb}/documents",
            files={"file": ("big.pdf", (corpus / "large/DA-619p.pdf").read_bytes())},
        ).json()
    [event] = asyncio.run(fetch_all(settings, "SELECT payload FROM outbox WHERE aggregate_id = :id", id=doc["id"]))
    body = json.dumps(event["payload"]).encode()
    response = httpx.post(f"{processor}/v1/events", content=body, headers=signed_headers(settings, body))
    assert response.status_code == 202, response.text

    def stage() -> str | None:
        [row] = asyncio.run(fetch_all(settings, "SELECT stage FROM documents WHERE id = :id", id=doc["id"]))
        return row["stage"] if row["stage"] == "extracting" else None

    until(stage, timeout_s=60, what="the document to reach extracting")

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stopped_in = time.monotonic() - started
    [row] = asyncio.run(
        fetch_all(settings, "SELECT status, lease_owner, attempts FROM documents WHERE id = :id", id=doc["id"])
    )
    assert row == {"status": "queued", "lease_owner": None, "attempts": 0}, row
    types = [
        r["type"]
        for r in asyncio.run(
            fetch_all(settings, "SELECT type FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc["id"])
        )
    ]
    assert types[-1] == "document.requeued"
    # Handed back while shutting down, long before a heartbeat could go stale.
    assert stopped_in < settings.stale_after_s, stopped_in
