"""The attempt watchdog's ceiling (Settings.attempt_timeout) and how embedding progress pushes it back."""

from __future__ import annotations

import asyncio

from services.processor.stages import Progress
from shared.settings import Settings


def test_the_default_ceiling_is_twice_the_finite_stage_timeouts() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.attempt_timeout_s is None
    assert settings.attempt_timeout() == 2 * (60 + 120 + 180 + 60)
    slower = Settings(_env_file=None, stage_timeouts='{"extracting": 600}')  # type: ignore[call-arg]
    assert slower.attempt_timeout() == 2 * (60 + 600 + 180 + 60)


def test_unlimited_stages_still_get_a_ceiling_and_an_explicit_one_wins() -> None:
    unlimited = {stage: None for stage in ("downloading", "extracting", "chunking", "embedding", "indexing")}
    settings = Settings(_env_file=None, stage_timeouts=unlimited)  # type: ignore[call-arg]
    assert settings.attempt_timeout() == 2 * (60 + 120 + 180 + 60)
    assert Settings(_env_file=None, attempt_timeout_s=30).attempt_timeout() == 30  # type: ignore[call-arg]


async def test_each_embedded_batch_pushes_the_watchdog_back_to_a_full_ceiling() -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(100.0) as watchdog:
        progress = Progress("embedding", total=3, watchdog=watchdog, watchdog_s=100.0)
        watchdog.reschedule(loop.time() + 1.0)  # the attempt has spent most of its ceiling
        progress.step(1)
        assert watchdog.when() is not None and watchdog.when() >= loop.time() + 99.0  # type: ignore[operator]


async def test_progress_never_pulls_a_later_watchdog_in() -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(1000.0) as watchdog:
        later = loop.time() + 1000.0
        watchdog.reschedule(later)
        Progress("embedding", total=3, watchdog=watchdog, watchdog_s=100.0).step(1)
        assert watchdog.when() == later
