"""The API as a real process (``kbingest api``) for attacks measured from outside: RSS, raw sockets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support import servers
from tests.support.pipeline_helpers import service_env, start_cli, stop_process, wait_http_ok


@dataclass(frozen=True)
class ApiProcess:
    port: int
    pid: int
    api_key: str
    internal_secret: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def api_process(settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    """``kbingest api`` on the test's database and bucket, owning a local vector store."""
    port = servers.free_port()
    internal = secrets.token_urlsafe(16)
    log = tmp_path / "api.log"
    env = service_env(settings, KBINGEST_API_PORT=str(port), KBINGEST_INTERNAL_SECRET=internal)
    proc = start_cli(["api"], env, log)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, log)
        assert settings.api_key is not None
        yield ApiProcess(port, proc.pid, settings.api_key.get_secret_value(), internal, log)
    finally:
        stop_process(proc)
