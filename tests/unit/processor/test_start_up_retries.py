"""Start-up survives the database going away between its check and ``mark_ready`` (a Postgres restart).

The fault campaign found a processor that exited when Postgres restarted while it started: the
readiness write sat outside the retried checks, so its error killed the start-up task and the
process. The registry's failure here is injected (named as such); the retry loop is the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from services.processor import state as state_module
from services.processor.state import ProcessorState
from shared.db import DatabaseUnavailable


class FlakyRegistry:
    """Injected failure: the first ``mark_ready`` meets a database that is shutting down."""

    processor_id = "test:1:flaky"
    registered = True

    def __init__(self) -> None:
        self.calls = 0

    async def mark_ready(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise DatabaseUnavailable("the database system is shutting down")


async def test_a_failed_mark_ready_is_retried_with_the_database_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "CHECK_RETRY_S", 0.01)
    checked: list[str] = []

    async def ok(name: str) -> None:
        checked.append(name)

    registry = FlakyRegistry()
    fields: dict[str, Any] = dict.fromkeys(("deps", "embedder", "worker", "presence"))
    state = ProcessorState(registry=cast(Any, registry), warm_up=lambda: ok("extractor"), **fields)
    for name in ("database", "object_store", "vector_store", "embedder"):
        monkeypatch.setattr(state, f"_{name}", lambda name=name: ok(name))

    await asyncio.wait_for(state.start_up(), 30)

    assert state.ready and state.became_ready.is_set()
    assert registry.calls == 2
    assert checked.count("database") == 2, "the database is checked again after the failed write"
    assert checked.count("object_store") == 1, "what answered stays answered"
    assert state.checks["database"] == "ok"
