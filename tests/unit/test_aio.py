"""shared.aio.wait_for never swallows a cancellation (asyncio.wait_for does on Python 3.11)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.aio import finish_then_cancel, wait_for

Waiter = Callable[[Awaitable[Any], float], Awaitable[Any]]


async def _loop_cancelled_as_its_wait_completes(waiter: Waiter) -> bool:
    """A loop like the processor's liveness task; True when the cancel stopped it."""
    task: asyncio.Task[None] | None = None

    async def cancel_then_finish() -> int:
        assert task is not None
        task.cancel()  # shutdown lands exactly as the awaited work completes
        return 1

    running = True

    async def serve() -> None:
        while running:
            await waiter(cancel_then_finish(), 5.0)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(serve())
    done, _ = await asyncio.wait([task], timeout=2.0)
    if not done:
        # The cancel was swallowed: stop the loop by its flag (another cancel could be swallowed too).
        running = False
        await asyncio.wait([task], timeout=2.0)
        return False
    return task.cancelled()


async def test_a_cancellation_as_the_wait_completes_stops_the_loop() -> None:
    assert await _loop_cancelled_as_its_wait_completes(wait_for)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fixed in 3.12's asyncio.wait_for")
async def test_why_asyncio_wait_for_is_not_used_on_3_11() -> None:
    assert not await _loop_cancelled_as_its_wait_completes(asyncio.wait_for)


async def test_timeouts_still_raise_and_cancel_the_awaited_work() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await wait_for(slow(), 0.05)
    assert cancelled.is_set()
    assert await wait_for(asyncio.sleep(0, result=7), 1.0) == 7


async def test_finish_then_cancel_runs_the_step_to_its_end_before_the_cancellation() -> None:
    gate = asyncio.Event()
    finished: list[str] = []

    async def step() -> None:
        await gate.wait()
        finished.append("taken back")

    caller = asyncio.ensure_future(finish_then_cancel(step()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done(), "the cancellation waits for the step"
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == ["taken back"]
