"""How late the event loop wakes a 10 ms sleeper while some work runs: blocking work shows as large lags."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

TICK_S = 0.01


@contextlib.asynccontextmanager
async def loop_lags() -> AsyncIterator[list[float]]:
    """Yields the list the lags (seconds beyond ``TICK_S``) are appended to until the block ends."""
    lags: list[float] = []

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags.append(time.perf_counter() - before - TICK_S)

    ticker = asyncio.create_task(probe())
    try:
        yield lags
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
