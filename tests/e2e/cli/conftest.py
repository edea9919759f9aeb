"""Fixtures for the CLI tests: the shared real stack and a way to run the real ``kbingest`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import user_stack

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def stack() -> Iterator[user_stack.UserStack]:
    running = user_stack.acquire()
    yield running
    user_stack.release(running)


def _kbingest() -> list[str]:
    script = Path(sys.executable).parent / "kbingest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli.main"]


@pytest.fixture
def kbingest(stack: user_stack.UserStack, tmp_path: Path) -> Run:
    """Run ``kbingest ARGS`` as a user would, pointed at the stack; returns the finished process."""

    def run(
        *args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KBINGEST_")}
        full_env = {
            **base,
            "KBINGEST_URL": stack.base_url,
            "KBINGEST_API_KEY": stack.api_key,
            "COLUMNS": "200",
            **(env or {}),
        }
        full_env = {k: v for k, v in full_env.items() if v is not None}
        return subprocess.run(
            [*_kbingest(), *args], env=full_env, cwd=cwd or tmp_path, capture_output=True, text=True, timeout=timeout
        )

    return run
